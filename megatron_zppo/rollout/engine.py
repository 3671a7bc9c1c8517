"""The interface every rollout engine implements, and the records it returns.

The training loop talks to the teacher only through `RolloutEngine` and to the student through
`StudentEngine` (a rollout engine whose weights it replaces after every step), so the in-process
engine (CPU demo, tests) and SGLang servers (production) are interchangeable.
Prompts travel as token ids, never as text, so an engine never re-tokenises differently from the
trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

# What a co-located server's memory is made of (SGLang's memory-saver tags); all of it by default.
MEMORY_TAGS = ("weights", "kv_cache", "cuda_graph")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_new_tokens: int = 512
    presence_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens!r}")



@dataclass(frozen=True)
class GenerateRequest:
    prompt_ids: Sequence[int]
    n: int = 1
    images: tuple[str | bytes, ...] = ()
    request_id: str = ""
    videos: tuple[str | bytes, ...] = ()
    # this request's own budget (a partial generation continued after a weight sync: rollout/partial.py)
    max_new_tokens: int | None = None


@dataclass
class Generation:
    response_ids: list[int]
    logprobs: list[float]  # log-prob of each response token under the sampling policy
    text: str
    finish_reason: str  # "stop" | "length" | "abort"
    weight_version: str = ""  # of its first token
    # (version, tokens) per run of tokens sampled by one weight version, oldest first; () = all by weight_version
    version_spans: tuple[tuple[str, int], ...] = ()


@dataclass
class EngineStats:
    tokens_generated: int = 0
    seconds_generating: float = 0.0
    seconds_syncing: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class RolloutEngine(Protocol):
    weight_version: str
    stats: EngineStats

    def generate(self, requests: Sequence[GenerateRequest], params: SamplingParams) -> list[list[Generation]]:
        """`n` generations per request, in request order. Raises rather than return partial groups."""

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              images: Sequence[tuple] | None = None) -> list[list[float]]:
        """Per-token log-probs of each given response after its prompt (and that prompt's images,
        one placeholder each in its ids, when `images` is given: a tuple per prompt)."""

    def health(self) -> bool: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class StudentEngine(RolloutEngine, Protocol):
    """What the loop also calls on the student: the new weights after every step and, for a server
    on the trainer's GPUs (`student.release_memory`), its memory handed over while the trainer trains."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> None:
        """Load HF-named tensors (all of them, streamed) and take `version` as the new weight version."""

    def release_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        """Give the GPU memory of `tags` to the trainer until `resume_memory`; no request may run meanwhile."""

    def resume_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None: ...

    def sync_metrics(self) -> dict[str, float]:
        """The last weight update's figures (sync_s, sync_bytes, sync_gb_per_s, sync_servers), or {}
        when this engine reports none."""
