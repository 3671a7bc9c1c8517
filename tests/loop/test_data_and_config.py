import json

import pytest
import yaml

from megatron_zppo.config import METHOD_KNOBS, PRESETS, dump_config, load_config
from megatron_zppo.config_io import ConfigError
from megatron_zppo.data import DataError, QuestionStream, SourceConfig, load_questions, load_source

BASE = ["student.hf_path=s", "teacher.hf_path=t"]


def test_jsonl_reports_each_bad_record_with_file_and_line(tmp_path):
    f = tmp_path / "qs.jsonl"
    f.write_text("\n".join([
        json.dumps({"id": "a", "question": "1+1?", "answer": "2"}),
        "{not json",
        json.dumps({"question": "no answer"}),
        json.dumps({"id": "b", "problem": "2+2?", "answer": 4}),
        json.dumps(["a list"]),
        "",
        json.dumps({"id": "c", "question": "  ", "answer": "1"}),
    ]))
    qs, problems = load_source(SourceConfig(kind="jsonl", path=str(f)))
    assert [q.id for q in qs] == ["a"]
    assert problems[0].startswith(f"{f} line 2: invalid JSON")
    assert "line 3: missing field 'answer'" in problems[1]
    assert "line 4: missing field 'question'" in problems[2]
    assert "line 5: record is not a JSON object" in problems[3]
    assert "line 7: field 'question' must be a non-empty string" in problems[4]
    renamed, _ = load_source(SourceConfig(kind="jsonl", path=str(f), question_field="problem"))
    assert [(q.id, q.answer) for q in renamed] == [("b", "4")]  # numeric answers become strings


def test_a_line_that_is_not_utf8_is_a_bad_record_naming_file_and_line(tmp_path):
    f = tmp_path / "qs.jsonl"
    good = json.dumps({"id": "a", "question": "1+1?", "answer": "2"}).encode()
    f.write_bytes(good + b"\n" + b'{"question": "caf\xe9?", "answer": "1"}' + b"\n")
    with pytest.raises(DataError, match=r"(?s)1 bad record.*qs.jsonl line 2: not UTF-8 text \(byte 0xe9 at column 18\)"):
        load_questions([SourceConfig(kind="jsonl", path=str(f))])
    skipped = []
    qs = load_questions([SourceConfig(kind="jsonl", path=str(f), skip_bad_records=True)], log=skipped.append)
    assert [q.id for q in qs] == ["a"] and len(skipped) == 1 and "line 2: not UTF-8" in skipped[0]


def test_no_usable_record_refuses_to_start(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"x": 1}\n')
    with pytest.raises(DataError, match="no usable question.*refusing to start"):
        load_questions([SourceConfig(kind="jsonl", path=str(f), skip_bad_records=True)], log=lambda *_: None)
    with pytest.raises(DataError, match=r"(?s)1 bad record\(s\) in data source .*bad.jsonl:\n  .*line 1: missing "
                                        r"field 'question'.*skip_bad_records: true"):
        load_questions([SourceConfig(kind="jsonl", path=str(f))])
    with pytest.raises(DataError, match="missing.jsonl does not exist"):
        load_questions([SourceConfig(kind="jsonl", path=str(tmp_path / "missing.jsonl"))])


def test_parquet_source_and_duplicate_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qs.parquet"
    pq.write_table(pa.table({"id": ["x", "x"], "question": ["q1", "q2"], "answer": ["1", "2"]}), path)
    with pytest.raises(DataError, match="question id 'x' appears more than once"):
        load_questions([SourceConfig(kind="parquet", path=str(path))])


def test_hf_datasets_source_from_a_local_dataset_directory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"question": ["1+1?", "2+2?"], "answer": ["2", "4"]}).save_to_disk(tmp_path / "ds")
    qs, problems = load_source(SourceConfig(kind="hf", path=str(tmp_path / "ds")))
    assert [q.answer for q in qs] == ["2", "4"] and not problems


def test_reasoning_gym_source_is_seeded_and_carries_its_scorer_entry():
    cfg = SourceConfig(kind="reasoning_gym", task="chain_sum", seed=5, size=4, task_config={"max_digits": 1})
    a, _ = load_source(cfg)
    b, _ = load_source(cfg)
    assert [q.text for q in a] == [q.text for q in b] and len(a) == 4
    assert a[0].metadata["grader"] == "task" and a[0].metadata["entry"]["answer"] == a[0].answer


def test_question_stream_resumes_at_the_same_position_across_epochs():
    qs, _ = load_source(SourceConfig(kind="reasoning_gym", task="chain_sum", seed=0, size=5))
    s = QuestionStream(qs, seed=3)
    first = [q.id for q in s.next(7)]  # crosses an epoch boundary
    assert len(set(first[:5])) == 5
    twin = QuestionStream(qs, seed=3)
    twin.load_state_dict(s.state_dict())
    assert [q.id for q in twin.next(6)] == [q.id for q in s.next(6)]
    with pytest.raises(ValueError, match="saved for 5 questions, the data now has 4"):
        QuestionStream(qs[:4]).load_state_dict(s.state_dict())


def test_presets_set_the_method_its_switches_and_the_buffer_and_explicit_values_win(tmp_path):
    expected = {  # method, buffer, (bcq, ncq, compression) where the method is ZPPO
        "grpo": ("grpo", False, None), "grpo_buffer": ("grpo", True, None),
        "zppo": ("zppo", True, (True, True, True)), "grpo_both": ("zppo", False, (True, True, True)),
        "grpo_buffer_ncq": ("zppo", True, (False, True, True)), "grpo_buffer_bcq": ("zppo", True, (True, False, True)),
        "zppo_no_norm": ("zppo", True, (True, True, True)), "zppo_norm_with_zero": ("zppo", True, (True, True, True)),
        "zppo_no_compression": ("zppo", True, (True, True, False)),
        "grpo_buffer_hint": ("hint", True, None), "grpo_buffer_prefix": ("prefix", True, None),
        "grpo_buffer_question_hint": ("question_hint", True, None),
        "off_distill": ("off_distill", False, None), "off_distill_buffer": ("off_distill", True, None),
        "on_distill": ("on_distill", False, None), "on_distill_buffer": ("on_distill", True, None),
        "teacher_sft": ("teacher_sft", False, None), "teacher_sft_buffer": ("teacher_sft", True, None),
        "sampled_token_distill": ("sampled_token_distill", False, None),
        "sampled_token_distill_buffer": ("sampled_token_distill", True, None),
        "logit_distill": ("logit_distill", False, None),
        "zppo_ds": ("zppo", True, (True, True, True)), "grpo_buffer_ds": ("grpo", True, None),
    }
    normalize = {"zppo_no_norm": "none", "zppo_norm_with_zero": "including_zero"}
    assert set(PRESETS) == set(expected)
    for name, (method, buffer, switches) in expected.items():
        c = load_config(None, BASE + [f"run.algorithm={name}"])
        z = c.method.zppo
        assert (c.method.name, c.buffer.enabled) == (method, buffer), name
        assert switches is None or (z.bcq, z.ncq, z.compression) == switches, name
        assert c.advantage.normalize == normalize.get(name, "excluding_zero"), name
        assert c.rollout.dynamic_sampling.enabled == name.endswith("_ds"), name
        dump_config(c, tmp_path / f"{name}.yaml")  # what a run writes to its directory loads back as it was,
        assert load_config(str(tmp_path / f"{name}.yaml"), []) == c, name
        dumped = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())["method"]  # with the knobs it read only
        assert set(dumped) - {"name", "tau", "graduate_at", "rho_aug", "pre_cap"} == {method} & set(METHOD_KNOBS), name
    c = load_config(None, BASE + ["run.algorithm=grpo", "buffer.enabled=true", "method.tau=0.3"])
    assert c.buffer.enabled and c.method.name == "grpo" and c.method.tau == 0.3
    c = load_config(None, BASE + ["run.algorithm=grpo_buffer_ncq", "method.zppo.bcq=true"])
    assert c.method.zppo.bcq and c.method.zppo.ncq


@pytest.mark.parametrize("old, new", [("run.algorithm=zppo_no_bcq", "use grpo_buffer_ncq$"),
                                      ("run.algorithm=hint", "use grpo_buffer_hint .*or grpo_buffer_question_hint"),
                                      ("run.algorithm=on_policy_distill_buffer",
                                       "use on_distill_buffer, or sampled_token_distill_buffer"),
                                      ("method.name=off_policy_distill", "use off_distill .*or teacher_sft"),
                                      ("advantage=reinforce_pp", "advantage.normalize: excluding_zero \\(was "
                                                                 "reinforce_pp\\)"),
                                      ("method.on_policy_distill.divergence=jsd",
                                       "method.on_policy_distill.divergence -> method.sampled_token_distill")])
def test_renamed_presets_and_keys_are_refused_naming_what_to_use(old, new):
    with pytest.raises(ConfigError, match=new):
        load_config(None, BASE + [old])


def test_method_settings_out_of_place_or_contradicting_are_refused():
    with pytest.raises(ConfigError, match="method.sampled_token_distill: divergence 'kl' unknown"):
        load_config(None, BASE + ["run.algorithm=sampled_token_distill", "method.sampled_token_distill.divergence=kl"])
    with pytest.raises(ConfigError, match="method.prefix.fraction: 1.0 is out of range"):
        load_config(None, BASE + ["run.algorithm=grpo_buffer_prefix", "method.prefix.fraction=1.0"])
    with pytest.raises(ConfigError, match="method.pre_cap 'all' unknown"):
        load_config(None, BASE + ["method.pre_cap=all"])
    with pytest.raises(ConfigError, match="advantage.normalize 'batch' unknown"):
        load_config(None, BASE + ["advantage.normalize=batch"])
    with pytest.raises(ConfigError, match="both false: no hard question would get a prompt; that is GRPO"):
        load_config(None, BASE + ["method.zppo.bcq=false", "method.zppo.ncq=false"])
    with pytest.raises(ConfigError, match="method.name 'ppo' unknown"):
        load_config(None, BASE + ["method.name=ppo"])
    with pytest.raises(ConfigError, match="run.algorithm='grpo' is a preset of method 'grpo', but method.name='zppo'"):
        load_config(None, BASE + ["run.algorithm=grpo", "method.name=zppo"])  # e.g. a run's config.yaml + a preset
    assert load_config(None, BASE + ["method.name=hint"]).method.name == "hint"  # no preset named: the default's
    with pytest.raises(ConfigError, match="uses the teacher"):
        load_config(None, ["student.hf_path=s", "run.algorithm=off_distill"])
    # ZPPO with NCQ only and no compression needs no teacher: its prompts list the student's own answers.
    assert not load_config(None, ["student.hf_path=s", "run.algorithm=grpo_buffer_ncq",
                                  "method.zppo.compression=false"]).method.needs_teacher


@pytest.mark.parametrize("old, new", [("zppo.tau=0.3", "zppo.tau -> method.tau"),
                                      ("zppo.bcq=false", "zppo.bcq -> method.zppo.bcq"),
                                      ("method.objective=logit_distill", "method.objective -> method.name"),
                                      ("method.hard_prompts=hint", "method.hard_prompts -> method.name"),
                                      ("method.prefix_fraction=0.3", "method.prefix_fraction -> method.prefix.fraction"),
                                      ("method.kd_top_k=5", "method.kd_top_k -> method.logit_distill.top_k")])
def test_the_method_keys_of_before_the_method_section_are_refused_naming_their_new_place(old, new):
    with pytest.raises(ConfigError, match=f"overrides: these keys moved: {new}$"):
        load_config(None, BASE + [old])


def test_config_errors_name_the_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"run: unknown key\(s\) \['stepz'\]"):
        load_config(None, BASE + ["run.stepz=3"])
    with pytest.raises(ConfigError, match="rollout.n_new: expected int, got 'many'"):
        load_config(None, BASE + ["rollout.n_new=many"])
    with pytest.raises(ConfigError, match="run.algorithm 'ppo' unknown"):
        load_config(None, BASE + ["run.algorithm=ppo"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, BASE + ["run.steps"])
    with pytest.raises(ConfigError, match="train.recompute 'some' unknown"):
        load_config(None, BASE + ["train.recompute=some"])
    with pytest.raises(ConfigError, match="loss: loss.aggregation 'sum' unknown"):
        load_config(None, BASE + ["loss.aggregation=sum"])
    with pytest.raises(ConfigError, match="teacher.hf_path is empty"):
        load_config(None, ["student.hf_path=s"])
    bad = tmp_path / "c.yaml"
    bad.write_text("run: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad), [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.yaml"), [])


def test_optimizer_keys_under_train_name_their_new_place(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  micro_batch_size: 4\n  lr: 1.0e-6\n  adam_beta2: 0.95\n")
    with pytest.raises(ConfigError, match=rf"{old}: these keys moved: "
                                          r"train.lr -> optimizer.lr; train.adam_beta2 -> optimizer.beta2"):
        load_config(str(old), BASE)
    assert load_config(None, BASE + ["optimizer.lr=3e-6", "optimizer.beta2=0.95"]).optimizer.beta2 == 0.95


def test_the_demo_config_loads():
    c = load_config("examples/cpu_toy/zppo.yaml", [])
    assert c.run.algorithm == "zppo" and c.method.zppo.bcq and c.buffer.enabled and len(c.data.train) == 1


def test_sglang_engine_address_comes_from_the_launchers_file(tmp_path):
    from megatron_zppo.build import server_urls

    f = tmp_path / "sglang.json"
    f.write_text(json.dumps({"student": ["http://127.0.0.1:30001", "http://127.0.0.1:30002"],
                             "student_router": "http://127.0.0.1:30000", "teacher": "http://127.0.0.1:30100"}))
    c = load_config(None, ["student.hf_path=s", "teacher.hf_path=t", "student.engine=sglang",
                           f"student.addresses={f}", "teacher.engine=sglang", f"teacher.addresses={f}"])
    # Every student server, not the router: each needs every weight update.
    assert server_urls(c.student, "student") == ["http://127.0.0.1:30001", "http://127.0.0.1:30002"]
    assert server_urls(c.teacher, "teacher") == ["http://127.0.0.1:30100"]
    f.write_text(json.dumps({"student": ["http://a:1"], "student_router": "http://r:2", "teacher": None}))
    assert server_urls(c.student, "student") == ["http://a:1"]
    with pytest.raises(ValueError, match="no address for the teacher"):
        server_urls(c.teacher, "teacher")
    c = load_config(None, BASE + ["student.engine=sglang", "student.urls=[http://a:1, http://b:2]"])
    assert server_urls(c.student, "student") == ["http://a:1", "http://b:2"]
    with pytest.raises(ConfigError, match="give one of url, urls, addresses"):
        load_config(None, BASE + ["student.engine=sglang", "student.url=http://a:1", "student.urls=[http://b:2]"])
    with pytest.raises(ConfigError, match="none of url, urls, addresses"):
        load_config(None, BASE + ["student.engine=sglang"])


def test_each_method_name_builds_its_plug_in_and_grpo_gives_hard_questions_no_prompt():
    from megatron_zppo import methods
    from megatron_zppo.methods.base import NoHardPrompts
    from tests.core.factories import group, question

    want = {"zppo": ("ZppoPrompts", "PolicyGradient"), "grpo": ("NoHardPrompts", "PolicyGradient"),
            "hint": ("HintPrompts", "PolicyGradient"), "prefix": ("PrefixPrompts", "PolicyGradient"),
            "question_hint": ("QuestionHintPrompts", "PolicyGradient"),
            "off_distill": ("NoHardPrompts", "OffDistill"), "on_distill": ("NoHardPrompts", "OnDistill"),
            "teacher_sft": ("NoHardPrompts", "TeacherSft"),
            "sampled_token_distill": ("NoHardPrompts", "SampledTokenDistill"),
            "logit_distill": ("NoHardPrompts", "LogitDistill")}
    held = {"off_distill": ("jsd", 0.5), "on_distill": ("jsd", 0.5), "logit_distill": ("forward_kl", 0.5)}
    assert set(methods.METHODS) == set(want)
    for name, (hard, objective) in want.items():
        cfg = load_config(None, BASE + [f"method.name={name}"])
        assert type(methods.build_hard_prompts(cfg, None, None, None, None)).__name__ == hard, name
        assert type(methods.build_objective(cfg)).__name__ == objective, name
        assert cfg.method.uses_teacher_tokens == (name in ("prefix", "off_distill", "on_distill", "teacher_sft",
                                                           "sampled_token_distill", "logit_distill")), name
        teacher = methods.trainer_teacher(cfg)  # the distributions' teacher inside the trainer, and its divergence
        assert (teacher.divergence, teacher.beta) == held[name] if name in held else teacher is None, name
    assert NoHardPrompts()([group(question(), [0.0, 0.0])], 5, 0, {}).specs == []  # hard, but no prompt
