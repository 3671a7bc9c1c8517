"""One behaviour contract, run against both engines: the in-process HF engine and the SGLang
client (on the local server that speaks SGLang 0.5.23's JSON)."""

import pytest
import torch

from megatron_zppo.rollout.engine import GenerateRequest, RolloutEngine, SamplingParams, StudentEngine
from megatron_zppo.rollout.sync import WeightSyncConfig, policy_engine

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["embedded", "sglang"])
def engine_and_weights(request, tmp_path_factory):
    """An engine plus a full set of HF-named tensors it accepts as a weight update."""
    if request.param == "embedded":
        from megatron_zppo.rollout.hf_engine import HFEngine
        from megatron_zppo.toy.models import build_tokenizer, new_qwen3

        d = tmp_path_factory.mktemp("hf")
        tok = build_tokenizer(d, ["1 + 2 = 3", "spell cat"] * 20, vocab_size=280)
        new_qwen3(d, "tiny", tok, seed=0)
        engine = HFEngine(str(d))
        weights = {n: p.detach().clone() + 0.01 for n, p in engine.model.named_parameters()}
        yield engine, weights
        return
    from megatron_zppo.rollout.sglang_engine import SGLangEngine
    from tests.rollout.fake_sglang import FakeSGLang

    with FakeSGLang() as server:
        engine = policy_engine([SGLangEngine(server.url, backoff_s=0.05, timeout_s=20)], "student",
                               WeightSyncConfig(backend="gloo", timeout_s=20))
        yield engine, {"model.embed_tokens.weight": torch.randn(16, 8), "model.norm.weight": torch.ones(8)}
        engine.shutdown()


def test_generate_contract(engine_and_weights):
    engine, _ = engine_and_weights
    assert isinstance(engine, RolloutEngine) and engine.health()
    prompts = [[3, 4, 5], [6, 7], [8]]
    out = engine.generate([GenerateRequest(p, n) for p, n in zip(prompts, (2, 1, 3))],
                          SamplingParams(max_new_tokens=6, seed=1))
    assert [len(g) for g in out] == [2, 1, 3]
    for group in out:
        for g in group:
            assert 0 < len(g.response_ids) <= 6 and len(g.logprobs) == len(g.response_ids)
            assert all(lp <= 0 for lp in g.logprobs) and g.finish_reason in ("stop", "length")


def test_score_reproduces_the_generation_logprobs(engine_and_weights):
    engine, _ = engine_and_weights
    prompt = [3, 4, 5]
    (g,), = engine.generate([GenerateRequest(prompt, 1)], SamplingParams(max_new_tokens=5, seed=2))
    scored = engine.score([prompt], [g.response_ids])[0]
    assert len(scored) == len(g.logprobs)
    assert max(abs(a - b) for a, b in zip(scored, g.logprobs)) < 1e-4


def test_weight_update_sets_the_version_every_later_sample_carries(engine_and_weights):
    engine, weights = engine_and_weights
    assert isinstance(engine, StudentEngine)
    engine.update_weights(iter(weights.items()), "step-7")
    assert engine.weight_version == "step-7"
    (g,), = engine.generate([GenerateRequest([3, 4], 1)], SamplingParams(max_new_tokens=3, seed=3))
    assert g.weight_version == "step-7"
