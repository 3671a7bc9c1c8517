"""Several sequences in one packed (THD) row give each sequence exactly its unpacked log-probs.

Qwen3 (local attention per sequence, RoPE restarting per sequence) and Qwen3.5 (its Gated DeltaNet
layers run per sequence, so neither the recurrent state nor the short convolution crosses a
boundary), against each sample run alone in its own row.
"""

import dataclasses

import pytest
import torch

from megatron_zppo.train.logprobs import LogprobRequest, SequenceBatch, forward_response_logprobs
from megatron_zppo.train.model import ModelConfig, build_policy
from megatron_zppo.train.parallel import ParallelConfig
from tests.train import test_qwen35, tiny_qwen3
from tests.train.qwen35_worker import save_tiny_qwen35


def _alone_and_packed(policy, prompts, responses):
    width = max(map(len, responses))
    packed = dataclasses.replace(SequenceBatch.from_lists(prompts, responses, response_width=width), packed=True)
    with torch.no_grad():
        lp, ent = forward_response_logprobs(policy.chunks[0], LogprobRequest(packed, 250, 4, True))
        alone = [forward_response_logprobs(policy.chunks[0], LogprobRequest(
            SequenceBatch.from_lists([p], [r], response_width=width), 250, 4, True)) for p, r in zip(prompts, responses)]
    return (lp, ent), (torch.cat([a for a, _ in alone]), torch.cat([e for _, e in alone]))


def _boundless(policy, prompts, responses):
    """The same tokens as one ordinary causal row: what a leak across boundaries would compute."""
    row = [t for p, r in zip(prompts, responses) for t in list(p) + list(r)]
    first = len(prompts[0]) + len(responses[0])
    batch = SequenceBatch.from_lists([row[: first + len(prompts[1])]], [responses[1]])
    with torch.no_grad():
        return forward_response_logprobs(policy.chunks[0], LogprobRequest(batch, 250, 4))[0]


@pytest.mark.parametrize("model", ["qwen3", "qwen35"])
def test_packed_row_logprobs_and_entropy_equal_each_sample_run_alone(model, tiny_qwen3_dir, megatron_world,
                                                                     tmp_path_factory):
    if model == "qwen3":
        hf_dir, prompts, responses = tiny_qwen3_dir, tiny_qwen3.PROMPTS, tiny_qwen3.RESPONSES
    else:  # its first prompt is longer than the delta rule's 64-token chunk
        hf_dir, prompts, responses = (save_tiny_qwen35(tmp_path_factory.mktemp("q35")), test_qwen35.PROMPTS,
                                      test_qwen35.RESPONSES)
    policy = build_policy(ModelConfig(hf_path=hf_dir), ParallelConfig())
    (lp, ent), (lp_alone, ent_alone) = _alone_and_packed(policy, prompts, responses)
    torch.testing.assert_close(lp, lp_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_alone, atol=1e-5, rtol=1e-5)
    assert (lp != 0).sum() == sum(map(len, responses))
    # Not equal by accident: the second sample after the first with no boundary differs clearly.
    leaked = _boundless(policy, prompts, responses)
    assert (leaked[0, : len(responses[1])] - lp_alone[1, : len(responses[1])]).abs().max() > 1e-3


def test_gated_delta_net_state_and_convolution_stop_at_each_boundary(megatron_world, tmp_path):
    from megatron.core.utils import unwrap_model

    from megatron_zppo.train.packed_sequences import SegmentedGatedDeltaNet, packed_row

    policy = build_policy(ModelConfig(hf_path=save_tiny_qwen35(tmp_path / "q35")), ParallelConfig())
    gdn = next(layer.self_attention for layer in unwrap_model(policy.chunks[0]).decoder.layers
               if isinstance(layer.self_attention, SegmentedGatedDeltaNet))
    hidden_size = gdn.config.hidden_size
    lengths = torch.tensor([70, 5, 3])  # the first crosses a 64-token chunk of the delta rule
    x = torch.randn(int(lengths.sum()), 1, hidden_size, generator=torch.Generator().manual_seed(0))
    params = packed_row(torch.zeros(3, 70, dtype=torch.long), lengths).params
    with torch.no_grad():
        packed, _ = gdn(x, None, packed_seq_params=params)
        bounds = [0, *torch.cumsum(lengths, 0).tolist()]
        alone = torch.cat([gdn(x[a:b], None)[0] for a, b in zip(bounds[:-1], bounds[1:])])
        whole, _ = gdn(x, None)  # no boundaries: state and conv window flow from one sequence on
    torch.testing.assert_close(packed, alone, atol=1e-6, rtol=1e-5)
    second = slice(70, 75)
    assert (whole[second] - alone[second]).abs().max() > 1e-3
    # The short convolution alone would leak into the first (conv width - 1) tokens of the next one.
    assert (whole[70:71] - alone[70:71]).abs().max() > 1e-4
