"""The paper's data recipe (megatron_zppo/data_recipe.py, tools/prepare_vl_data.py): the pure rules
one by one, bad recipe inputs named, and one end-to-end run over two sources with every option."""

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from megatron_zppo.core.records import Question
from megatron_zppo.data import DataError, SourceConfig, load_questions
from megatron_zppo.data_recipe import (DUPLICATE, NO_SUBSET, NOT_TIERED, OVER_CAP, SUBSET_TAKEN, Recipe, Record,
                                       answer_words, choose_pass_rate_sources, fill_cap, is_free_form, load_mapping,
                                       parse_canonical, parse_tier_caps, plan, question_key)

REPO = Path(__file__).resolve().parents[2]


def _record(i: int, source: int = 0, subset: str | None = "s", pass_rate=None) -> Record:
    return Record(Question(f"{source}-{subset}-{i}", f"q{i}", "1"), source, i, f"src{source}.jsonl line {i + 1}",
                  subset, pass_rate)


def _kept(groups, admit=lambda r: None) -> list[str]:
    return [r.question.id for g in groups for r, why in fill_cap(g.records, g.cap, admit) if why is None]


# --- tier caps and canonical names ---------------------------------------------------------------

def test_tier_caps_give_each_canonical_subdataset_its_tiers_cap():
    canonical = parse_canonical({"ai2d": ["stem-ai2d_merged", "AI2D"], "raven": ["Raven"]}, "canonical.yaml")
    assert canonical == {"ai2d": "ai2d", "stem-ai2d_merged": "ai2d", "AI2D": "ai2d", "raven": "raven",
                         "Raven": "raven"}
    caps = parse_tier_caps({2800: ["ai2d", "AI2D", "geo170k"], 1400: ["Raven"]}, "tiers.yaml", canonical)
    assert caps == {"ai2d": 2800, "geo170k": 2800, "raven": 1400}
    assert parse_tier_caps({"2800": ["ai2d"]}, "tiers.json", {}) == {"ai2d": 2800}  # JSON keys are strings


def test_the_papers_tier_list_and_canonical_map_as_shipped_parse_to_its_two_tiers():
    data = REPO / "examples" / "paper" / "data"
    canonical = parse_canonical(load_mapping(str(data / "canonical.yaml"), "canonical"), "canonical.yaml")
    caps = parse_tier_caps(load_mapping(str(data / "tier_caps.yaml"), "tier caps"), "tier_caps.yaml", canonical)
    assert sorted(Counter(caps.values()).items()) == [(1400, 19), (2800, 21)]  # sub-datasets per tier, merged
    assert canonical["AI2D"] == "ai2d" and canonical["Raven"] == "raven" and caps["geometry3k"] == 2800


@pytest.mark.parametrize("data, message", [
    ([["ai2d"]], r"tiers.yaml: expected a mapping of cap -> list of sub-dataset names.*got a list"),
    ({"big": ["ai2d"]}, r"tiers.yaml: tier cap 'big' is not a positive integer"),
    ({0: ["ai2d"]}, r"tier cap 0 is not a positive integer"),
    ({2800: "ai2d"}, r"tier 2800 holds 'ai2d'; expected a list of sub-dataset names"),
    ({2800: ["ai2d"], 1400: ["AI2D"]}, r"sub-dataset 'AI2D' \(canonical name 'ai2d'\) is named in two tiers, "
                                       r"caps 2800 and 1400"),
])
def test_a_tier_caps_file_that_is_not_caps_to_names_or_names_a_subdataset_twice_is_refused(data, message):
    with pytest.raises(DataError, match=message):
        parse_tier_caps(data, "tiers.yaml", {"AI2D": "ai2d"})


def test_a_canonical_map_giving_a_name_two_canonical_names_is_refused():
    with pytest.raises(DataError, match=r"canonical.yaml: sub-dataset 'AI2D' is given two canonical names, "
                                        r"'ai2d' and 'diagrams'"):
        parse_canonical({"ai2d": ["AI2D"], "diagrams": ["AI2D"]}, "canonical.yaml")
    with pytest.raises(DataError, match=r"expected a mapping of canonical name -> list"):
        parse_canonical({"ai2d": "AI2D"}, "canonical.yaml")


# --- plan and caps --------------------------------------------------------------------------------

def test_a_capped_subdataset_keeps_a_seeded_sample_not_its_first_records():
    records = [_record(i) for i in range(100)]  # a sorted source: its first ten would be no sample
    groups, dropped = plan(records, Recipe(caps={"s": 10}, seed=1))
    kept = _kept(groups)
    assert len(kept) == 10 and dropped == []
    assert kept != [r.question.id for r in records[:10]]
    assert kept == _kept(plan(records, Recipe(caps={"s": 10}, seed=1))[0])  # reproducible
    assert set(kept) != set(_kept(plan(records, Recipe(caps={"s": 10}, seed=2))[0]))
    assert len(_kept(plan(records, Recipe(caps={"other": 10}, seed=1))[0])) == 100  # in no tier: all kept


def test_records_dropped_by_the_checks_do_not_use_up_a_cap_and_records_past_it_are_never_judged():
    groups, _ = plan([_record(i) for i in range(10)], Recipe(caps={"s": 3}))
    judged = []

    def admit(r):  # every second record fails its image check
        judged.append(r)
        return "image too small" if len(judged) % 2 else None

    outcome = list(fill_cap(groups[0].records, groups[0].cap, admit))
    assert [why for _, why in outcome] == ["image too small", None] * 3 + [OVER_CAP] * 4
    assert len(judged) == 6


def test_a_subdataset_in_two_sources_is_taken_from_the_first_and_untiered_ones_follow_uncapped():
    records = ([_record(i, 0, "ai2d") for i in range(2)] + [_record(i, 1, "ai2d") for i in range(3)]
               + [_record(0, 1, "virl"), _record(1, 1, None)])
    groups, dropped = plan(records, Recipe(caps={"ai2d": 5}))
    assert [(g.source, g.subset) for g in groups] == [(0, "ai2d"), (1, "virl")]
    assert sorted(why for _, why in dropped) == [NO_SUBSET] + [SUBSET_TAKEN] * 3
    _, dropped = plan(records, Recipe(caps={"ai2d": 5}, uncapped="drop"))
    assert [r.question.id for r, why in dropped if why == NOT_TIERED] == ["1-virl-0"]
    no_subsets = [_record(i, k, "") for k in (0, 1) for i in range(2)]  # without --subset-field: no sub-dataset rule
    assert plan(no_subsets, Recipe())[1] == [] and len(_kept(plan(no_subsets, Recipe())[0])) == 4


def test_the_pass_rate_filter_drops_only_rates_above_the_limit_in_the_sources_it_applies_to():
    records = [_record(0, 1, "b", pass_rate=0.9), _record(1, 1, "b", pass_rate=0.5), _record(2, 1, "b", pass_rate=0),
               _record(3, 1, "b"), _record(4, 0, "a", pass_rate=0.9)]
    recipe = Recipe(pass_rate_field="pass_rate", max_pass_rate=0.5, pass_rate_sources=frozenset({1}))
    groups, dropped = plan(records, recipe)
    assert [(r.question.id, why) for r, why in dropped] == [("1-b-0", "pass rate above 0.5")]
    assert sorted(_kept(groups)) == ["0-a-4", "1-b-1", "1-b-2", "1-b-3"]  # source 0 is not filtered
    bad = [_record(0, 1, "b", pass_rate="high")]
    with pytest.raises(DataError, match=r"src1.jsonl line 1 \(record '1-b-0'\): pass-rate field 'pass_rate' is "
                                        r"'high'; expected a number"):
        plan(bad, recipe)


def test_the_pass_rate_filter_applies_to_the_sources_named_or_else_to_those_carrying_the_field():
    sources = ["vero.jsonl", "mmfr.jsonl", "extra.jsonl"]
    assert choose_pass_rate_sources(None, sources, {1}, "pass_rate") == {1}
    assert choose_pass_rate_sources(["2", "extra.jsonl"], sources, {0, 1, 2}, "pass_rate") == {1, 2}
    with pytest.raises(DataError, match=r"--pass-rate-sources '4' is not a source; expected a number from 1 to 3"):
        choose_pass_rate_sources(["4"], sources, {1}, "pass_rate")
    with pytest.raises(DataError, match=r"names vero.jsonl, but none of its records has the field 'pass_rate'"):
        choose_pass_rate_sources(["vero.jsonl"], sources, {1}, "pass_rate")


# --- duplicates and free-form answers -------------------------------------------------------------

def test_questions_are_the_same_up_to_case_and_spacing_and_only_with_the_same_images():
    assert question_key("How many  Sides?\n", ["img1"]) == question_key("how many sides?", ["img1"])
    assert question_key("How many sides?", ["img1"]) != question_key("How many sides?", ["img2"])
    assert question_key("How many sides?", ["img1"]) != question_key("How many edges?", ["img1"])


@pytest.mark.parametrize("answer", ["42", "-3.5", "B", "x^2 + 2x + 1", r"\frac{\sqrt{3}}{2}", r"\boxed{12}",
                                    "red", "The Eiffel Tower", "x = 3 and y = 4", r"\text{right angle}"])
def test_numbers_expressions_letters_and_short_phrases_are_not_free_form(answer):
    assert not is_free_form(answer, min_words=4)


@pytest.mark.parametrize("answer", ["The bird is sitting on a branch", "It increases, then decreases",
                                    "a red car parked near two trees"])
def test_answers_of_four_or_more_words_are_free_form(answer):
    assert is_free_form(answer, min_words=4)
    assert not is_free_form(answer, min_words=answer_words(answer) + 1)


# --- the tool -------------------------------------------------------------------------------------

def _png(w: int, h: int, colour: int) -> Image.Image:
    return Image.new("RGB", (w, h), (colour, 255 - colour, 7))


def _image(tmp_path, name: str, w: int = 100, h: int = 100, colour: int = 0) -> str:
    _png(w, h, colour).save(tmp_path / name)
    return str(tmp_path / name)


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return str(path)


def _tool():
    spec = importlib.util.spec_from_file_location("prepare_vl_data", REPO / "tools" / "prepare_vl_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_vl_data_builds_a_two_source_mix_with_the_whole_recipe(tmp_path):
    img = lambda name, **kw: _image(tmp_path, name, **kw)  # noqa: E731
    row = lambda i, subset, answer="3", **kw: {"id": i, "question": f"Question {i}?", "answer": answer,  # noqa: E731
                                               "images": [img(f"{i}.png", colour=len(i) * 9 % 256)],
                                               "dataset": subset} | kw
    (tmp_path / "copy.png").write_bytes(Path(img("shared.png", colour=200)).read_bytes())
    vero = _jsonl(tmp_path / "vero.jsonl", [
        *[row(f"ai{i}", "stem-ai2d_merged") for i in range(4)],  # tier 1, cap 2
        *[row(f"rv{i}", "raven") for i in range(2)],  # tier 2, cap 1
        row("small", "misc") | {"images": [img("s.png", w=99)]},  # misc: in no tier, kept whole
        row("free", "misc", answer="The bird is sitting on a branch"),
        {"id": "shared", "question": "How many  Sides?", "answer": "4", "images": [str(tmp_path / "shared.png")],
         "dataset": "misc"},
        '{"id": "broken"}',
    ])
    mmfr = _jsonl(tmp_path / "mmfr.jsonl", [
        *[row(f"AI{i}", "AI2D", pass_rate=0.1) for i in range(2)],  # ai2d is taken from vero
        row("RV0", "Raven", pass_rate=0.1),
        row("easy", "ViRL39K", pass_rate=0.9),  # above 0.5: dropped
        row("edge", "ViRL39K", pass_rate=0.5),
        row("norate", "ViRL39K"),  # no pass rate: kept
        row("long", "ViRL39K", answer="x" * 513, pass_rate=0.0),
        {"id": "dup", "question": "how many sides?", "answer": "4", "images": [str(tmp_path / "copy.png")],
         "dataset": "ViRL39K", "pass_rate": 0.2},  # vero's "shared", same pixels from another file
        {"id": "diff", "question": "how many sides?", "answer": "5", "images": [img("d.png", colour=3)],
         "dataset": "ViRL39K", "pass_rate": 0.2},  # same text, another image: kept
        row("why", "ViRL39K", answer="It rises because the air is warm", pass_rate=0.3),
    ])
    (tmp_path / "tiers.yaml").write_text("2: [ai2d, geo170k]\n1: [Raven]\n")
    (tmp_path / "canonical.yaml").write_text("ai2d: [stem-ai2d_merged, AI2D]\nraven: [Raven]\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "tools/prepare_vl_data.py", "--source", vero, "--source", mmfr, "--out", str(out),
         "--subset-field", "dataset", "--tier-caps", str(tmp_path / "tiers.yaml"), "--canonical",
         str(tmp_path / "canonical.yaml"), "--seed", "3", "--pass-rate-field", "pass_rate", "--max-pass-rate", "0.5",
         "--route-free-form", "judge"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["dropped"] == {"over its tier cap": 3, SUBSET_TAKEN: 3, "pass rate above 0.5": 1, DUPLICATE: 1,
                                 "image too small": 1, "answer longer than 512 characters": 1, "malformed record": 1}
    assert report["examples"][DUPLICATE] == "2:dup" and report["examples"][SUBSET_TAKEN] == "2:AI0"
    assert report["kept"] == 9 and report["files"] == {"questions.jsonl": 7, "free_form.jsonl": 2}
    assert report["kept_by_source"] == {vero: 5, mmfr: 4}
    assert report["kept_by_subset"] == {"ViRL39K": 4, "ai2d": 2, "misc": 2, "raven": 1}
    assert report["tier_names_not_seen"] == ["geo170k"]
    assert report["pass_rate"] == {"sources": [mmfr], "missing_kept": 1}
    assert report["options"]["seed"] == 3 and report["options"]["uncapped"] == "keep"

    plain = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in plain]
    assert len([i for i in ids if i.startswith("1:ai")]) == 2 and len([i for i in ids if i.startswith("1:rv")]) == 1
    assert ids[-4:] == ["1:shared", "2:edge", "2:norate", "2:diff"]  # source order, the first source first
    assert plain[-1]["metadata"] == {"source": mmfr, "subset": "ViRL39K"}
    judged = load_questions([SourceConfig(kind="jsonl", path=str(out / "free_form.jsonl"), grader="judge")])
    assert [(q.id, q.metadata["grader"]) for q in judged] == [("1:free", "judge"), ("2:why", "judge")]
    assert Image.open(judged[0].images[0]).size == (100, 100)


@pytest.mark.parametrize("argv, message", [
    (["--canonical", "c.yaml"], "--canonical and --tier-caps need --subset-field"),
    (["--subset-field", "dataset", "--uncapped", "drop"], "--uncapped drop needs --tier-caps"),
    (["--max-pass-rate", "0.5"], "--pass-rate-field and --max-pass-rate go together"),
    (["--source", "a.jsonl"], "a source is given twice"),
])
def test_options_that_make_no_sense_without_another_are_refused_before_any_work(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        _tool().main(["--source", "a.jsonl", "--out", "unused", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("tiers, source_extra, message", [
    ("{big: [ai2d]}", {}, r"tiers.yaml: tier cap 'big' is not a positive integer"),
    ("2: [ai2d]\n1: [ai2d]", {}, r"tiers.yaml: sub-dataset 'ai2d' is named in two tiers"),
    ("2: [ai2d]", {"pass_rate": "high"}, r"src.jsonl line 1 \(record 'a'\): pass-rate field 'pass_rate' is 'high'"),
    ("2: [ai2d]", {"dataset": None, "set": "ai2d"}, r"source .*src.jsonl: no record has the sub-dataset field "
                                                    r"'dataset' \(fields present: \['answer', .*'set'\]\)"),
])
def test_bad_recipe_inputs_stop_the_tool_naming_the_file_field_and_value(tmp_path, capsys, tiers, source_extra,
                                                                         message):
    src = _jsonl(tmp_path / "src.jsonl", [{k: v for k, v in ({"id": "a", "question": "q", "answer": "1",
                                                              "dataset": "ai2d"} | source_extra).items()
                                           if v is not None}])
    (tmp_path / "tiers.yaml").write_text(tiers)
    rc = _tool().main(["--source", src, "--out", str(tmp_path / "out"), "--subset-field", "dataset", "--tier-caps",
                       str(tmp_path / "tiers.yaml"), "--pass-rate-field", "pass_rate", "--max-pass-rate", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("prepare_vl_data: ")
    assert re.search(message, err), err
