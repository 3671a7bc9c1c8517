"""The maths of the baselines ZPPO is compared with (docs/method.md, "Baselines and ablations"), as pure functions.

On-policy distillation. The student samples y ~ p_S; the teacher scores the sampled tokens. For a
divergence D(p_S, p_T) between the two next-token distributions at one position, the score-function
identity turns the gradient into a per-token advantage that needs only the two log-probs of the
sampled token:

    grad D = E_{y~p_S}[ grad log p_S(y) * dD/dp_S(y) ]        (the "+1" terms sum to zero)

    reverse KL  D = KL(p_S || p_T):                   A(y) = log p_T(y) - log p_S(y)
    JSD_beta    D = beta KL(p_T||M) + (1-beta) KL(p_S||M), M = beta p_T + (1-beta) p_S:
                                                      A(y) = -(1-beta) * log(p_S(y) / M(y))

The advantages then go through the same clipped policy loss as GRPO, token by token. The paper's
own distillation rows take the divergence over the whole vocabulary instead (`token_jsd`), with the
teacher's distributions from the teacher the trainer holds (train/logit_distill.py). This is the
per-position estimate (each position's divergence is minimised given its prefix; later positions'
dependence on the sampled token is not credited), as in the usual token-level on-policy distillation.

Hint and Prefix baselines. The hint is whatever the teacher writes for an answer-free hint request,
with every `\\boxed{}` removed so no final answer is handed over verbatim. The prefix is the first
`fraction` of a correct teacher response's tokens, placed after the prompt; the student continues
it and only its own continuation is trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from megatron_zppo.core.answers import boxes

DIVERGENCES = ("reverse_kl", "jsd")


def distill_advantages(student_logprobs: Sequence[float], teacher_logprobs: Sequence[float],
                       divergence: str = "reverse_kl", beta: float = 0.5) -> np.ndarray:
    """Per-token advantages that descend `divergence` between student and teacher (see module doc)."""
    s = np.asarray(student_logprobs, dtype=np.float64)
    t = np.asarray(teacher_logprobs, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"distill_advantages: {s.shape[0]} student log-probs but {t.shape[0]} teacher log-probs")
    if divergence == "reverse_kl":
        return t - s
    if divergence == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"method.sampled_token_distill.jsd_beta must be in (0, 1), got {beta!r}")
        log_m = np.logaddexp(math.log(beta) + t, math.log1p(-beta) + s)
        return -(1.0 - beta) * (s - log_m)
    raise ValueError(f"method.sampled_token_distill.divergence {divergence!r} unknown; expected one of {DIVERGENCES}")


def token_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """JSD_beta = beta KL(p_T || M) + (1-beta) KL(p_S || M), M = beta p_T + (1-beta) p_S, summed over
    the last (vocabulary) dimension of two log-probability tensors. A vocabulary shard's log-probs
    (normalised over the whole vocabulary) give that shard's part of the sum."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"the JSD's beta must be in (0, 1), got {beta!r}")
    log_m = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log1p(-beta))
    return (beta * teacher_logp.exp() * (teacher_logp - log_m)
            + (1.0 - beta) * student_logp.exp() * (student_logp - log_m)).sum(-1)


def prefix_length(n_tokens: int, fraction: float) -> int:
    """Tokens of a teacher response given as the start of the answer: floor(fraction * n) as the
    paper, at least one token and never the whole response (the student must write something)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"method.prefix.fraction must be in (0, 1), got {fraction!r}")
    if n_tokens < 2:
        return 0
    return min(max(1, math.floor(fraction * n_tokens)), n_tokens - 1)


def redact_answers(text: str) -> str:
    """`text` with every answer box removed (`answers.boxes`: `\\boxed{...}`, `\\fbox{...}`,
    `\\boxed 5`; an unclosed one to the end): what makes a hint answer-free."""
    out, i = [], 0
    for b in boxes(text):
        out.append(text[i:b.start])
        i = b.end
        if b.content is None:
            break
    out.append(text[i:])
    return "".join(out).strip()
