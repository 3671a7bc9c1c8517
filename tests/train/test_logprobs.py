"""Response log-probs from Megatron equal Hugging Face's, chunked or not."""

import pytest
import torch

from megatron_zppo.train.logprobs import (
    LogprobRequest,
    SequenceBatch,
    _mask_padded_vocab,
    _vocab_parallel_entropy,
    forward_response_logprobs,
)
from megatron_zppo.train.model import ModelConfig, build_policy
from megatron_zppo.train.parallel import ParallelConfig
from tests.train.tolerances import FP32_VS_FP64

PROMPTS = [[5, 17, 3], [9], [100, 101, 102, 103, 104]]
RESPONSES = [[7, 8, 9, 10, 11, 12], [42, 43], [200, 249, 0]]


@pytest.fixture(scope="module")
def policy(tiny_qwen3_dir, megatron_world):
    return build_policy(ModelConfig(hf_path=tiny_qwen3_dir), ParallelConfig())


@pytest.fixture(scope="module")
def hf_model(tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float64).eval()  # tests/train/tolerances.py


def _hf_response_stats(hf_model, prompt, response):
    """Log-probs and entropies of one unpadded sample, straight from HF logits."""
    tokens = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = hf_model(tokens).logits[0]
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    chosen = logp.gather(-1, torch.tensor(response)[:, None])[:, 0]
    return chosen, -(logp.exp() * logp).sum(-1)


def _megatron_stats(policy, batch, chunk_size, with_entropy=True):
    (model,) = policy.chunks
    request = LogprobRequest(batch, policy.vocab_size, chunk_size=chunk_size, with_entropy=with_entropy)
    return forward_response_logprobs(model, request)


def test_megatron_logprobs_and_entropy_match_hf_for_variable_length_responses(policy, hf_model):
    batch = SequenceBatch.from_lists(PROMPTS, RESPONSES, response_width=7)
    with torch.no_grad():
        logprobs, entropy = _megatron_stats(policy, batch, chunk_size=3)
    assert logprobs.shape == entropy.shape == (3, 7)
    mask = batch.response_mask()
    assert torch.all(logprobs[~mask] == 0) and torch.all(entropy[~mask] == 0)
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        ref_lp, ref_ent = _hf_response_stats(hf_model, prompt, response)
        n = len(response)
        torch.testing.assert_close(logprobs[i, :n].double(), ref_lp, **FP32_VS_FP64)
        torch.testing.assert_close(entropy[i, :n].double(), ref_ent, **FP32_VS_FP64)


def test_chunked_logprobs_and_gradients_equal_unchunked(policy):
    (model,) = policy.chunks
    batch = SequenceBatch.from_lists(PROMPTS, RESPONSES)
    results = []
    for chunk_size in (1, 2, 64):
        model.zero_grad()
        logprobs, entropy = _megatron_stats(policy, batch, chunk_size)
        (logprobs.sum() + 0.1 * entropy.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((logprobs.detach(), entropy.detach(), grads))
    model.zero_grad()
    ref_lp, ref_ent, ref_grads = results[-1]
    assert ref_grads["output_layer.weight"].abs().sum() > 0
    for logprobs, entropy, grads in results[:-1]:
        torch.testing.assert_close(logprobs, ref_lp, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(entropy, ref_ent, atol=1e-6, rtol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_sequence_batch_rejects_an_empty_prompt():
    with pytest.raises(ValueError, match="prompt"):
        SequenceBatch.from_lists([[]], [[1, 2]])


def test_padded_vocab_rows_get_no_probability_mass_and_no_nan_entropy(megatron_world):
    # Megatron can pad the output layer to a multiple of the TP size; the padded logits are 0,
    # not -inf. Vocabulary 7 split over 2 ranks of 4: the last column of rank 1 is padding.
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.0]]])
    masked = _mask_padded_vocab(logits, vocab_size=7, tp_rank=1)
    assert torch.equal(masked[..., :3], logits[..., :3])
    assert masked[..., 3] < -1e30
    assert _mask_padded_vocab(logits, vocab_size=7, tp_rank=0) is logits
    entropy = _vocab_parallel_entropy(masked.requires_grad_(), tp_group=None)
    expected = torch.distributions.Categorical(logits=logits[..., :3]).entropy()
    torch.testing.assert_close(entropy.detach(), expected)
    entropy.sum().backward()
    assert torch.isfinite(masked.grad).all()
