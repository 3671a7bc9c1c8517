"""The paper's whole suite (31 benchmarks, every converter) end to end on fixture releases: a
scripted student whose answers are right, undecidable or wrong in turn, a scripted judge, and
every score, decision count, family average and table cell checked against a direct computation."""

import re

import pytest

from megatron_zppo.data import load_questions
from megatron_zppo.evaluation import ocrbench, rules, table
from megatron_zppo.evaluation.protocols import Protocol
from megatron_zppo.evaluation.suite import load_suite, run_suite
from megatron_zppo.rollout.engine import EngineStats, Generation
from tests.evaluation.paper_fixtures import write_paper_data

MARK = "JUDGE-YES"  # the scripted judge says "correct" exactly when it is shown this
WRONG = r"\boxed{ZZZ}"


def answer(q, i: int, shift: int = 0) -> str:
    """The i-th question's response: its gold boxed, no final answer (the reasoning carries MARK),
    or a final answer that is no option, no number and no gold."""
    mode = (i + shift) % 3
    return [rf"\boxed{{{q.answer}}}", f"<think>{MARK}</think>{MARK}", WRONG][mode]


class Student:
    """Answers each eval request by its question's position among the questions it was told of."""

    def __init__(self, questions, shift=0):
        self.position = {f"eval:{q.id}": (q, i) for i, q in enumerate(questions)}
        self.shift, self.weight_version, self.stats = shift, "scripted", EngineStats()

    def generate(self, requests, params):
        return [[Generation([1], [0.0], answer(*self.position[r.request_id], self.shift), "stop")] * r.n
                for r in requests]


class Judge:
    weight_version, stats = "judge", EngineStats()

    def generate(self, requests, params):
        out = []
        for r in requests:
            prompt = "".join(map(chr, r.prompt_ids))
            yes = MARK in prompt
            reply = ('{"score": 0.5}' if yes else '{"score": 0.0}') if '{"score"' in prompt else \
                ('{"verdict": "correct"}' if yes else '{"verdict": "wrong"}')
            out.append([Generation([1], [0.0], reply, "stop")])
        return out


def expected(q, spec: str, i: int, shift: int) -> float:
    """What the protocol must give, computed here from the rules' documented behaviour."""
    p, response, mode = Protocol.parse(spec), answer(q, i, shift), (i + shift) % 3
    if p.rule == "anls":
        return rules.anls(response, q)
    if p.rule == "ocrbench_v2":
        return ocrbench.score(response, q)
    if p.rule:  # the rule decides the gold right; the judge sees MARK only in the undecided reasoning
        return [1.0, 1.0, 0.0][mode]
    return [0.0, 0.5 if p.judge == "mmvet" else 1.0, 0.0][mode]  # a benchmark judge sees no MARK in a box


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    counts = write_paper_data(root)
    suite = load_suite("examples/paper/eval/all.yaml", str(root))
    questions = {(name, i): load_questions([src], log=lambda *_: None)
                 for name, b in suite.benchmarks.items() for i, src in enumerate(b.sources)}
    return suite, questions, counts


def _run(paper, shift):
    suite, questions, _ = paper
    every = [q for qs in questions.values() for q in qs]
    from megatron_zppo.evaluation.judge import EvalJudge

    judge = EvalJudge(Judge(), lambda text: [ord(c) for c in text])
    return run_suite(suite, Student(every, shift), lambda text, *a, **k: [0], judge, log=lambda *_: None)


def test_the_paper_suite_runs_every_benchmark_and_scores_what_its_protocol_says(paper):
    suite, questions, counts = paper
    result = _run(paper, 0)
    assert len(result["benchmarks"]) == 31 and set(result["families"]) == {"vlm", "llm", "video"}
    assert [n for n, b in suite.benchmarks.items() if b.family == "vlm"] == list(suite.benchmarks)[:16]
    every = [q for qs in questions.values() for q in qs]
    position = {q.id: i for i, q in enumerate(every)}
    for name, b in suite.benchmarks.items():
        groups = {}
        for i, src in enumerate(b.sources):
            assert len(questions[(name, i)]) == counts[src.task] > 0
            for q in questions[(name, i)]:
                key = f"{src.task}/{q.metadata[b.parts_by]}" if b.parts_by else src.task
                groups.setdefault(key, []).append(expected(q, src.grader or b.grader, position[q.id], 0))
        e = result["benchmarks"][name]
        assert [p["scores"] for p in e["parts"]] == [pytest.approx(v) for v in groups.values()], name
        assert e["score"] == pytest.approx(sum(sum(v) / len(v) for v in groups.values()) / len(groups)), name
        d = e["decided"]
        assert d["rule"] + d["metric"] + d["judge"] + d["undecided"] == e["n"] and d["undecided"] == 0, name
    for fam, f in result["families"].items():
        scores = [e["score"] for e in result["benchmarks"].values() if e["family"] == fam]
        assert f["mean"] == pytest.approx(sum(scores) / len(scores))
        assert f["ci95_benchmarks"][0] <= f["mean"] <= f["ci95_benchmarks"][1]
    en = {}
    for q in questions[("ocrbench_v2_en", 0)]:
        en.setdefault(q.metadata["task"], []).append(ocrbench.score(answer(q, position[q.id]), q))
    assert result["benchmarks"]["ocrbench_v2_en"]["score"] == pytest.approx(ocrbench.bucket_mean(en, "en"))


def test_the_paper_tables_have_its_columns_and_a_delta_row_per_family(paper, tmp_path):
    runs = {"base": _run(paper, 1), "zppo": _run(paper, 0)}
    md, data = table.report(runs, delta_of="zppo", n_boot=1000)
    assert "| model | AI2D | BabyV | CharXiv | DynaM | EmbSp | InfoVQA | MVerse | MVision | MVista | MMMUPro | " \
           "MM-Vet | OCREN | OCRZH | VisP | VBlind | WeMath | Avg |" in md
    assert "| model | AIME25 | AIME26 | CEval | GPQA-D | HLE | IMO-AB | MMLU | MMLU-Pro | MMLU-Rd | MultiCh | Avg |" in md
    assert "| model | MMVU | MVBench | VMME | VMMES | VMMMU | Avg |" in md
    llm = data["llm"]["table"]
    for col, v in llm["Δ"].items():  # zppo minus the strongest other (base) in each column
        mine, base = (llm[m]["avg"] if col == "Avg" else llm[m]["scores"][_name(runs, col)] for m in ("zppo", "base"))
        assert v == pytest.approx(mine - base)
    d = data["llm"]["deltas"][0]
    assert d["against"] == "base" and d["delta"] == pytest.approx(llm["Δ"]["Avg"])
    row = next(line for line in md.splitlines() if line.startswith("| base | ") and "–" not in line)
    assert re.fullmatch(r"\| base( \| \d+\.\d)+ \|", row)
    table.plot(runs, tmp_path / "families.png")
    assert (tmp_path / "families.png").stat().st_size > 1000


def _name(runs, label):
    return next(n for n, e in runs["zppo"]["benchmarks"].items() if e["label"] == label)
