"""A hostile-but-fair probe of what a user can hand the main job: each case is one bad input and the
one clear error (a `RunError` naming the file/field/server, the value found and what was expected)
it must end in, instead of a raw traceback from inside a library, a silent acceptance or a hang.

Data, model paths and checkpoints here; the SGLang server's garbage answers are probed in
tests/rollout/test_sglang_engine.py against the fake server, and the trainer-side checkpoint
checks in tests/train/test_checkpointing.py.
"""

import json
import os

import pytest

from megatron_zppo import build, run_checkpoint
from megatron_zppo.config import load_config
from megatron_zppo.data import SourceConfig, load_questions
from megatron_zppo.errors import RunError

GOOD = json.dumps({"id": "ok", "question": "1+1?", "answer": "2"})


def _write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# (case, file name, content, source kind, fragments the error must contain, in order)
DATA_CASES = [
    ("empty file", "qs.jsonl", "", "jsonl", ["qs.jsonl", "holds no records"]),
    ("blank lines only", "qs.jsonl", "\n  \n", "jsonl", ["qs.jsonl", "holds no records"]),
    ("bytes that are not UTF-8", "qs.jsonl", GOOD.encode() + b"\n\xff\xfe{}\n", "jsonl",
     ["qs.jsonl line 2", "not UTF-8 text (byte 0xff at column 1)"]),
    ("a JSON list, not an object", "qs.jsonl", GOOD + '\n["q", "a"]\n', "jsonl",
     ["qs.jsonl line 2", "not a JSON object (got a list)"]),
    ("a JSON string, not an object", "qs.jsonl", GOOD + '\n"what is 2+2?"\n', "jsonl",
     ["qs.jsonl line 2", "not a JSON object (got a string)"]),
    ("truncated JSON", "qs.jsonl", GOOD + '\n{"question": "2+2?", "ans\n', "jsonl",
     ["qs.jsonl line 2", "invalid JSON"]),
    ("missing answer field", "qs.jsonl", GOOD + '\n{"question": "2+2?"}\n', "jsonl",
     ["qs.jsonl line 2", "missing field 'answer'"]),
    ("question is a number", "qs.jsonl", GOOD + '\n{"question": 4, "answer": "4"}\n', "jsonl",
     ["line 2", "field 'question' must be a non-empty string, got 4"]),
    ("answer is a list", "qs.jsonl", GOOD + '\n{"question": "q", "answer": [1, 2]}\n', "jsonl",
     ["line 2", "field 'answer' must be a non-empty string, got [1, 2]"]),
    ("answer is a boolean", "qs.jsonl", GOOD + '\n{"question": "q", "answer": true}\n', "jsonl",
     ["line 2", "field 'answer' must be a non-empty string, got True"]),
    ("images is a number", "qs.jsonl", GOOD + '\n{"question": "q", "answer": "1", "images": 5}\n', "jsonl",
     ["line 2", "field 'images' must be an image or a list of images, got 5"]),
    ("id is an object", "qs.jsonl", GOOD + '\n{"id": {"a": 1}, "question": "q", "answer": "1"}\n', "jsonl",
     ["line 2", "field 'id' must be a string or an integer"]),
    ("parquet file of random bytes", "qs.parquet", os.urandom(64), "parquet",
     ["qs.parquet", "cannot be read as Parquet"]),
    ("JSONL handed to the parquet reader", "qs.parquet", GOOD + "\n", "parquet",
     ["qs.parquet", "cannot be read as Parquet"]),
]


@pytest.mark.parametrize("name, filename, content, kind, fragments", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_ends_in_one_error_naming_file_line_and_expectation(tmp_path, name, filename, content, kind,
                                                                     fragments):
    path = _write(tmp_path / filename, content)
    with pytest.raises(RunError) as info:
        load_questions([SourceConfig(kind=kind, path=str(path))], log=lambda *_: None)
    message = str(info.value)
    positions = [message.find(f) for f in fragments]
    assert -1 not in positions and positions == sorted(positions), message


def test_a_truncated_parquet_file_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qs.parquet"
    pq.write_table(pa.table({"question": ["q"] * 50, "answer": ["1"] * 50}), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RunError, match=r"qs.parquet cannot be read as Parquet"):
        load_questions([SourceConfig(kind="parquet", path=str(path))])


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_directory_or_a_missing_file_as_data_is_named(tmp_path, kind):
    with pytest.raises(RunError, match=f"data file {tmp_path} is a directory; a {kind} source reads one file"):
        load_questions([SourceConfig(kind=kind, path=str(tmp_path))])
    with pytest.raises(RunError, match=r"data file .*nope.jsonl does not exist \(resolved to /"):
        load_questions([SourceConfig(kind=kind, path=str(tmp_path / "nope.jsonl"))])


def test_a_source_whose_records_are_all_bad_is_refused_even_when_skipping(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", '{"q": 1}\n{"q": 2}\n')
    good = _write(tmp_path / "good.jsonl", GOOD + "\n")
    sources = [SourceConfig(kind="jsonl", path=str(p), skip_bad_records=True) for p in (good, bad)]
    with pytest.raises(RunError, match=r"no usable question in data source .*bad.jsonl: all 2 record\(s\) are bad"):
        load_questions(sources, log=lambda *_: None)


# ---- model paths -----------------------------------------------------------------------------
def _cfg(student, teacher="", **extra):
    over = [f"student.hf_path={student}", f"teacher.hf_path={teacher or student}"]
    return load_config(None, over + [f"{k}={v}" for k, v in extra.items()])


def test_a_model_path_typo_that_looks_like_a_hub_id_is_refused_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy_models" / "student_small").mkdir(parents=True)
    (tmp_path / "toy_models" / "student_small" / "config.json").write_text("{}")
    with pytest.raises(RunError, match=r"student.hf_path='toy_models/studnet_small': the local directory "
                                       r"/.*/toy_models/studnet_small does not exist and .* is not in the Hugging "
                                       r"Face cache either; the run is offline-first"):
        build.check_model_paths(_cfg("toy_models/studnet_small", "toy_models/student_small"))
    with pytest.raises(RunError, match=r"teacher.hf_path='\.\./teacher': the local directory .* does not exist; "
                                       "fix the path"):
        build.check_model_paths(_cfg("toy_models/student_small", "../teacher"))
    with pytest.raises(RunError, match=r"student.weight_sync.disk_support_dir='nowhere/x'"):
        build.check_model_paths(_cfg("toy_models/student_small", **{"student.weight_sync.disk_support_dir": "nowhere/x"}))
    build.check_model_paths(_cfg("toy_models/student_small", "toy_models/student_small"))  # both fine


def test_a_model_path_that_is_no_hf_checkpoint_is_refused(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(RunError, match=r"student.hf_path=.*weights' exists but is not a Hugging Face checkpoint "
                                       r"directory \(no config.json"):
        build.check_model_paths(_cfg(str(tmp_path / "weights")))
    with pytest.raises(RunError, match="no config.json"):
        build.check_model_paths(_cfg(str(tmp_path / "weights" / "model.safetensors")))


def test_a_hub_id_already_in_the_local_cache_is_accepted(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--model" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--model" / "refs" / "main").write_text("abc123")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(RunError, match="not in the Hugging Face cache"):
        build.check_model_paths(_cfg("org/model"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    build.check_model_paths(_cfg("org/model"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # downloads asked for explicitly
    build.check_model_paths(_cfg("org/model"))


@pytest.mark.timeout(120)
def test_the_main_job_refuses_a_missing_model_path_in_one_line_before_starting(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "pretrain_zppo.py", "--config", "examples/cpu_toy/zppo.yaml",
                           f"run.dir={tmp_path}/run", "student.hf_path=toy_models/studnet_small"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "student.hf_path='toy_models/studnet_small'" in proc.stderr and "offline-first" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_sglang_engines_know_their_models_vocabulary(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 321}))
    cfg = load_config(None, [f"student.hf_path={tmp_path / 'm'}", f"teacher.hf_path={tmp_path / 'm'}",
                             "student.engine=sglang", "student.url=http://127.0.0.1:9"])
    engine = build.make_engine(cfg.student, "student", 0)
    try:
        assert engine.vocab_size == 321
    finally:
        engine.shutdown()


# ---- resuming the main job: damaged checkpoints and settings the checkpoint overrides ----------
def _main(args, timeout=600):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "pretrain_zppo.py", "--config", "examples/cpu_toy/zppo.yaml", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_resuming_the_main_job_refuses_changed_betas_and_names_a_damaged_shard(toy_world, tmp_path):
    from tests.loop.test_pretrain_e2e import _overrides

    run = tmp_path / "run"
    fresh = _main(_overrides(toy_world, tmp_path / "fresh", 0, ["--load", "auto"]))
    assert fresh.returncode == 0 and "run.load=auto: no checkpoint under" in fresh.stdout, fresh.stderr[-3000:]
    first = _main(_overrides(toy_world, run, 2, ["run.save_every=1"]))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = run / "checkpoints"
    assert (ckpts / "step_000001" / "COMPLETE").is_file() and (ckpts / "latest").read_text() == "step_000002"

    # Adam's betas live in the optimizer state: a resume that changes them is refused, not ignored.
    betas = _main(_overrides(toy_world, run, 3, ["--load", "auto", "optimizer.beta2=0.99", "optimizer.clip_grad=0.5"]))
    assert betas.returncode == 2 and betas.stderr.splitlines()[-1].startswith("pretrain_zppo: "), betas.stderr[-3000:]
    assert "optimizer.beta2: 0.999 -> 0.99" in betas.stderr and "clip_grad" not in betas.stderr.split("0.99")[-1]

    # A model shard cut short after the save: named with its sizes, and the earlier checkpoint offered.
    shard = max((ckpts / "step_000002" / "model").glob("*.distcp"), key=lambda f: f.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:1000])
    damaged = _main(_overrides(toy_world, run, 3, ["--load", "auto"]))
    assert damaged.returncode == 2 and damaged.stderr.splitlines()[-1].startswith("pretrain_zppo: "), damaged.stderr[-3000:]
    assert (f"checkpoint {ckpts / 'step_000002'} is damaged: model/{shard.name} is 1000 bytes, the save wrote"
            in damaged.stderr)
    assert f"the earlier complete checkpoint {ckpts / 'step_000001'} can be loaded instead" in damaged.stderr


def test_an_hf_data_source_that_is_neither_local_nor_cached_is_refused_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RunError, match=r"hf data source 'data/typo_ds': the local path .*data/typo_ds does not exist "
                                       r"and 'data/typo_ds' is not in the Hugging Face cache; the run is offline-first"):
        load_questions([SourceConfig(kind="hf", path="data/typo_ds")])
