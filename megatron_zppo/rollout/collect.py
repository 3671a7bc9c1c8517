"""Turn prompts into scored groups through an engine: the rollout phase of the loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from megatron_zppo.core.answers import last_boxed
from megatron_zppo.core.prompts import encode_media
from megatron_zppo.core.records import Group, PromptKind, Question, Sample
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.rollout.engine import GenerateRequest, RolloutEngine, SamplingParams


@dataclass(frozen=True)
class PromptSpec:
    question: Question
    kind: PromptKind
    group_id: str
    text: str
    # Prefix baseline: token ids (and their text) forced at the start of the answer, after the prompt.
    prefix_ids: tuple[int, ...] = ()
    prefix_text: str = ""


def generate_groups(engine: RolloutEngine, encode: Callable[..., list[int]], specs: Sequence[PromptSpec],
                    n: int, params: SamplingParams, max_prompt_tokens: int) -> tuple[list[Group], list[PromptSpec]]:
    """`n` student rollouts per prompt. Prompts longer than `max_prompt_tokens` are not sent;
    they come back as the second value so the caller can count them."""
    kept, too_long, reqs = [], [], []
    for s in specs:
        q = s.question
        ids = encode_media(encode, s.text, q) + list(s.prefix_ids)  # one placeholder per image and video
        # Each placeholder becomes its image's (video's) tokens in the model: count those, not 1.
        length = len(ids) + media_tokens(encode, q.images, q.videos)
        if length > max_prompt_tokens:
            too_long.append(s)
            continue
        kept.append(s)
        reqs.append(GenerateRequest(ids, n, q.images, s.group_id, videos=q.videos))
    gens = engine.generate(reqs, params) if reqs else []
    groups = []
    for s, req, gs in zip(kept, reqs, gens, strict=True):
        if len(gs) != n:  # an engine must never hand back a half-filled group
            raise RuntimeError(f"engine returned {len(gs)} of {n} rollouts for prompt {s.group_id!r}")
        samples = [Sample(s.question.id, s.group_id, s.kind, list(req.prompt_ids), g.response_ids, g.text,
                          g.logprobs, finish_reason=g.finish_reason, weight_version=g.weight_version,
                          version_spans=g.version_spans,
                          answer_prefix=s.prefix_text, images=s.question.images,
                          videos=s.question.videos) for g in gs]
        groups.append(Group(s.group_id, s.question, s.kind, s.text, samples))
    return groups, too_long


def media_tokens(encode, images, videos) -> int:
    """Tokens the placeholders add once expanded (each placeholder itself already counted once)."""
    extra = encode.image_tokens(images) - len(images) if images and hasattr(encode, "image_tokens") else 0
    if videos and hasattr(encode, "video_tokens"):
        extra += encode.video_tokens(videos) - len(videos)
    return extra


def score_samples(samples: Sequence[Sample], questions: dict[str, Question], graders: GraderPool,
                  judge: Callable[[list[Question], list[str | None]], list[float]] | None = None) -> None:
    """Set `reward` on every sample: its own final answer against its question's gold answer,
    whatever prompt it was sampled from (with a forced answer prefix, prefix + response). Questions whose grader is "judge" go to the LLM judge."""
    by_judge = [s for s in samples if graders.wants_judge(questions[s.question_id])]
    rest = [s for s in samples if not graders.wants_judge(questions[s.question_id])]
    texts = [s.answer_prefix + s.response_text for s in rest]
    for s, r in zip(rest, graders.grade(texts, [questions[s.question_id] for s in rest])):
        s.reward = r
    if by_judge:
        if judge is None:
            raise ValueError("questions ask for the LLM judge but no teacher engine is configured")
        qs = [questions[s.question_id] for s in by_judge]
        for s, r in zip(by_judge, judge(qs, [last_boxed(s.answer_prefix + s.response_text) for s in by_judge])):
            s.reward = r
