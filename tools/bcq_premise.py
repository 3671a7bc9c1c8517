"""The method's premise on a model: its plain accuracy against its BCQ accuracy on the same questions.

    python tools/bcq_premise.py --config examples/real_model/zppo.yaml --questions 16 --out runs/premise

ZPPO helps only if a student that fails a question answers it better when shown one right and one
wrong candidate (a BCQ prompt). For each question this samples `rollout.group_size` plain answers
from the student; on the hard ones (plain accuracy < method.tau) it takes a correct answer from
`rollout.teacher_group_size` teacher samples and one of the student's wrong answers, builds the BCQ
prompt exactly as a run does (prompt templates, random candidate order), and samples the student
again. It also builds the NCQ prompt of every hard question from the student's wrong answers (raw,
without the run's candidate compression) and samples the student on it. The figures are reported
for the hard questions and, separately, for the hardest (plain accuracy <= --hardest). Sampling and
grading are the run's (student/teacher temperature, reward.grader). Writes `premise.json` (per
question) and prints example texts and the figures, last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")


def sample(engine, encode, prompts: list[str], n: int, params) -> list[list[str]]:
    from megatron_zppo.rollout.engine import GenerateRequest

    return [[g.text for g in gs] for gs in engine.generate([GenerateRequest(encode(p), n) for p in prompts], params)]


def graded(graders, texts: list[list[str]], questions) -> list[list[float]]:
    flat = graders.grade([t for ts in texts for t in ts], [q for q, ts in zip(questions, texts) for _ in ts])
    out, k = [], 0
    for ts in texts:
        out.append(flat[k:k + len(ts)])
        k += len(ts)
    return out


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--questions", type=int, default=16, help="questions from the first data.eval set")
    ap.add_argument("--out", default="runs/premise")
    ap.add_argument("--hardest", type=float, default=0.1, help="plain accuracy at or below which a question is hardest")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    from megatron_zppo import upstream_log

    upstream_log.route(args.out)  # model loading's progress bars and warnings: <out>/upstream.log
    from megatron_zppo import build
    from megatron_zppo.config import load_config
    from megatron_zppo.core.answers import wrong_answer_list
    from megatron_zppo.data import load_questions
    from megatron_zppo.rollout.engine import SamplingParams

    cfg = load_config(args.config, args.overrides)
    if not cfg.data.eval:
        raise SystemExit(f"{args.config}: data.eval is empty; the premise is measured on its first set")
    questions = load_questions(next(iter(cfg.data.eval.values())), log=lambda *_: None)[: args.questions]
    tmpl, graders = build.templates(cfg), build.make_graders(cfg)
    student = build.make_engine(cfg.student, "student", cfg.run.seed)
    same = cfg.teacher.hf_path == cfg.student.hf_path and cfg.teacher.engine == cfg.student.engine == "embedded"
    teacher = student if same else build.make_engine(cfg.teacher, "teacher", cfg.run.seed + 1)
    encode = build.make_encoder(cfg.student.hf_path)
    n, n_t, new = cfg.rollout.group_size, cfg.rollout.teacher_group_size, cfg.rollout.max_new_tokens
    s_params = SamplingParams(cfg.student.temperature, cfg.student.top_p, max_new_tokens=new, seed=cfg.run.seed)
    t_params = SamplingParams(cfg.teacher.temperature, cfg.teacher.top_p, max_new_tokens=new, seed=cfg.run.seed + 1)

    plain = sample(student, encode, [tmpl.plain(q.text) for q in questions], n, s_params)
    plain_scores = graded(graders, plain, questions)
    hard = [i for i, s in enumerate(plain_scores) if mean(s) < cfg.method.tau]
    t_texts = sample(teacher, build.make_encoder(cfg.teacher.hf_path), [tmpl.plain(questions[i].text) for i in hard],
                     n_t, t_params)
    t_scores = graded(graders, t_texts, [questions[i] for i in hard])
    rng, bcq_rows = random.Random(cfg.run.seed), []
    for i, texts, scores in zip(hard, t_texts, t_scores):
        right = next((t for t, s in zip(texts, scores) if s == 1.0), None)
        if right is None:
            continue  # the teacher found no correct answer either: a run builds no BCQ for it
        wrong = next(t for t, s in zip(plain[i], plain_scores[i]) if s == 0.0)
        shown = [right, wrong] if rng.random() < 0.5 else [wrong, right]
        bcq_rows.append((i, tmpl.bcq_prompt(questions[i].text, shown)))
    bcq = sample(student, encode, [p for _, p in bcq_rows], n, s_params)
    bcq_scores = graded(graders, bcq, [questions[i] for i, _ in bcq_rows])
    ncq_rows = []
    for i in hard:
        wrong = [t for t, s in zip(plain[i], plain_scores[i]) if s == 0.0]
        ncq_rows.append((i, tmpl.ncq_prompt(questions[i].text, wrong, wrong_answer_list(wrong))))
    ncq = sample(student, encode, [p for _, p in ncq_rows], n, s_params)
    ncq_scores = graded(graders, ncq, [questions[i] for i, _ in ncq_rows])
    graders.close()

    per_q = [{"id": q.id, "question": q.text, "answer": q.answer, "plain": plain[i], "plain_acc": mean(plain_scores[i])}
             for i, q in enumerate(questions)]
    for (i, prompt), texts, scores in zip(bcq_rows, bcq, bcq_scores):
        per_q[i].update(bcq_prompt=prompt, bcq=texts, bcq_acc=mean(scores))
    for (i, prompt), texts, scores in zip(ncq_rows, ncq, ncq_scores):
        per_q[i].update(ncq_prompt=prompt, ncq=texts, ncq_acc=mean(scores))
    figures = {"questions": len(questions), "samples_per_prompt": n, "plain_accuracy": mean(mean(s) for s in plain_scores),
               "hard_questions": len(hard), "hard_with_teacher_answer": len(bcq_rows),
               "plain_accuracy_on_those": mean(per_q[i]["plain_acc"] for i, _ in bcq_rows),
               "bcq_accuracy_on_those": mean(mean(s) for s in bcq_scores),
               "ncq_accuracy_on_hard": mean(mean(s) for s in ncq_scores)}
    hardest = [q for q in per_q if "bcq_acc" in q and q["plain_acc"] <= args.hardest]
    figures.update({f"hardest_questions (plain <= {args.hardest})": len(hardest),
                    "plain_accuracy_on_hardest": mean(q["plain_acc"] for q in hardest),
                    "bcq_accuracy_on_hardest": mean(q["bcq_acc"] for q in hardest),
                    "ncq_accuracy_on_hardest": mean(q["ncq_acc"] for q in hardest)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "premise.json").write_text(json.dumps({"figures": figures, "questions": per_q}, indent=2))
    example = per_q[bcq_rows[0][0]] if bcq_rows else per_q[0]
    print(f"question: {example['question']}  (gold {example['answer']})")
    print(f"  a plain answer: {example['plain'][0]!r}")
    if "bcq" in example:
        print(f"  an answer to its BCQ prompt: {example['bcq'][0]!r}")
    for key, value in figures.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
