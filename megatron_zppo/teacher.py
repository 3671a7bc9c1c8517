"""What the frozen teacher does for ZPPO: rollouts on hard questions, candidate compression and
LLM-judge grading. All three go through a `RolloutEngine`, so an in-process model and an SGLang
server serve them alike. Nothing the teacher writes reaches the policy gradient: its rollouts are
returned as `Sample`s marked `sampled_by="teacher"`, which `batch.training_samples` refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from megatron_zppo.core.baselines import redact_answers
from megatron_zppo.core.prompts import PromptTemplates, encode_media, parse_summary
from megatron_zppo.core.records import TEACHER, PromptKind, Question, Sample
from megatron_zppo.rollout.engine import GenerateRequest, RolloutEngine, SamplingParams

JUDGE_PROMPT = (
    "You grade answers. Question:\n{question}\n\nReference answer: {gold}\n\nStudent's final answer: {given}\n\n"
    'Reply with JSON only: {{"verdict": "correct"}} if the student\'s answer means the same as the reference, '
    'otherwise {{"verdict": "wrong"}}.'
)


@dataclass
class TeacherStats:
    compressed: int = 0
    compression_fallbacks: int = 0  # summary unusable: raw candidate shown instead
    judge_calls: int = 0
    judge_malformed: int = 0


class Teacher:
    def __init__(self, engine: RolloutEngine, encode: Callable[..., list[int]], templates: PromptTemplates,
                 sampling: SamplingParams, compress_max_tokens: int = 512):
        self.engine, self.encode, self.templates, self.sampling = engine, encode, templates, sampling
        self.compress_sampling = SamplingParams(temperature=0.0, max_new_tokens=compress_max_tokens)
        self.judge_sampling = SamplingParams(temperature=0.0, max_new_tokens=512)
        self.stats = TeacherStats()

    def _sampling(self, seed: int | None) -> SamplingParams:
        return self.sampling if seed is None else replace(self.sampling, seed=seed)

    def rollouts(self, questions: Sequence[Question], n: int, seed: int | None = None) -> dict[str, list[Sample]]:
        """`n` unscored teacher rollouts per question, on the plain prompt, drawn afresh each call
        (`seed`: a reproducible draw, so that a resumed run samples what the uninterrupted one did)."""
        reqs = [GenerateRequest(encode_media(self.encode, self.templates.plain(q.text), q), n, q.images,
                                f"teacher:{q.id}", videos=q.videos) for q in questions]
        out = {}
        for q, req, gens in zip(questions, reqs, self.engine.generate(reqs, self._sampling(seed))):
            out[q.id] = [Sample(q.id, f"{q.id}:teacher", PromptKind.PLAIN, req.prompt_ids, g.response_ids, g.text,
                                g.logprobs, sampled_by=TEACHER, finish_reason=g.finish_reason,
                                weight_version=g.weight_version, images=q.images, videos=q.videos) for g in gens]
        return out

    def hints(self, questions: Sequence[Question], seed: int | None = None,
              responses: Sequence[str] | None = None) -> list[str]:
        """One answer-free hint per question: the teacher's reply to the hint request, written from
        its own correct response to the question (the paper's Hint), or from the question alone
        (`responses` None), sampled like its rollouts, with every `\\boxed{}` cut out so no final
        answer is handed over."""
        given = [None] * len(questions) if responses is None else list(responses)
        reqs = [GenerateRequest(encode_media(self.encode, self.templates.hint_request_prompt(q.text, r), q), 1,
                                q.images, f"hint:{q.id}", videos=q.videos)
                for q, r in zip(questions, given, strict=True)]
        gens = self.engine.generate(reqs, self._sampling(seed)) if reqs else []
        return [redact_answers(g.text) for (g,) in gens]

    def compress(self, texts: list[str]) -> list[str]:
        """Candidate summaries (docs/method.md, "6. Candidate compression"); a summary that is missing or changes
        the final answer falls back to the raw text."""
        reqs = [GenerateRequest(self.encode(self.templates.compress_prompt(t)), 1) for t in texts]
        gens = self.engine.generate(reqs, self.compress_sampling) if reqs else []
        out = []
        for t, (g,) in zip(texts, gens):
            text, used = parse_summary(g.text, t)
            self.stats.compressed += used
            self.stats.compression_fallbacks += not used
            out.append(text)
        return out

    def judge(self, questions: Sequence[Question], given: Sequence[str | None]) -> list[float]:
        """1.0 where the teacher's strict JSON verdict is "correct"; a malformed verdict scores 0."""
        prompts = [JUDGE_PROMPT.format(question=q.text, gold=q.answer, given=a) for q, a in zip(questions, given)]
        idx = [i for i, a in enumerate(given) if a is not None]  # no final answer: wrong, no call needed
        gens = self.engine.generate([GenerateRequest(self.encode(prompts[i]), 1) for i in idx], self.judge_sampling)
        scores = [0.0] * len(given)
        for i, (g,) in zip(idx, gens):
            self.stats.judge_calls += 1
            verdict = parse_verdict(g.text)
            self.stats.judge_malformed += verdict is None
            scores[i] = float(verdict == "correct")
        return scores


def parse_verdict(text: str) -> str | None:
    """"correct" / "wrong" from a strict JSON object `{"verdict": ...}`, else None."""
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or set(obj) != {"verdict"} or obj["verdict"] not in ("correct", "wrong"):
        return None
    return obj["verdict"]
