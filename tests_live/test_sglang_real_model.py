"""A real pretrained model on a real SGLang 0.5.23 server (CPU, fp32): SmolLM2-135M-Instruct.

Serving (real text through its chat template), the train-inference mismatch users watch most
(SGLang's log-probs of its own samples against the Megatron trainer's on the same tokens: mean and
max absolute difference, printed), one weight sync from the trainer that changes what it serves,
and the main job for two ZPPO steps with this server as its student (the teacher in process).
"""

import pytest
import torch

from megatron_zppo.core.prompts import encode_prompt
from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.sglang_engine import SGLangEngine
from megatron_zppo.rollout.sync import WeightSyncConfig, policy_engine

QUESTIONS = ["What is the capital of France?", "What is 2 + 3? Answer with a number."]


@pytest.fixture(scope="module")
def engine(real_model_server):
    e = policy_engine([SGLangEngine(real_model_server, timeout_s=300)], "student",
                      WeightSyncConfig(backend="gloo", timeout_s=300))
    yield e
    e.shutdown()


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return [encode_prompt(tok, q) for q in QUESTIONS], tok


@pytest.fixture(scope="module")
def policy(smollm2_dir):
    from megatron_zppo.train import cpu_compat, parallel
    from megatron_zppo.train.model import ModelConfig, build_policy

    cpu_compat.enable()  # the test process is the entry point here
    parallel.initialize(parallel.ParallelConfig(seed=1234))
    yield build_policy(ModelConfig(hf_path=smollm2_dir), parallel.ParallelConfig())
    parallel.destroy()


def _trainer_logprobs(policy, prompt: list[int], response: list[int]) -> list[float]:
    from megatron_zppo.train.logprobs import LogprobRequest, SequenceBatch, forward_response_logprobs

    batch = SequenceBatch.from_lists([prompt], [response])
    with torch.no_grad():
        lp, _ = forward_response_logprobs(policy.chunks[0], LogprobRequest(batch, policy.vocab_size, chunk_size=64))
    return lp[0, : len(response)].tolist()


def test_the_server_answers_in_real_text_and_stops_at_the_end_token(engine, prompts):
    ids, tok = prompts
    out = engine.generate([GenerateRequest(ids[0], 1)], SamplingParams(temperature=0, max_new_tokens=24))
    (g,) = out[0]
    assert "Paris" in g.text, g.text  # greedy SmolLM2-135M-Instruct knows this one
    assert g.finish_reason == "stop" and g.response_ids[-1] == tok.eos_token_id  # <|im_end|>, id 2


def test_sglang_logprobs_agree_with_the_megatron_trainer_on_its_own_samples(engine, prompts, policy):
    ids, _ = prompts
    gens = engine.generate([GenerateRequest(p, 2) for p in ids], SamplingParams(max_new_tokens=24, seed=4))
    diffs = []
    for prompt, group in zip(ids, gens):
        for g in group:
            ours = _trainer_logprobs(policy, prompt, g.response_ids)
            diffs += [abs(a - b) for a, b in zip(ours, g.logprobs)]
    mean, worst = sum(diffs) / len(diffs), max(diffs)
    print(f"sglang_vs_trainer_logprob_abs_diff mean={mean:.2e} max={worst:.2e} over {len(diffs)} tokens")
    # fp32 on both sides, 30 layers: HF's own fp32 forward is within 1e-5 of fp64 on such tokens.
    assert mean < 1e-3 and worst < 1e-2


def test_a_weight_sync_from_the_trainer_changes_what_the_server_serves(engine, prompts, policy, smollm2_dir):
    from megatron_zppo.rollout.hf_engine import HFEngine
    from megatron_zppo.train.model import export_hf_weights

    ids, _ = prompts
    params = SamplingParams(temperature=0, max_new_tokens=12)
    (before,) = engine.generate([GenerateRequest(ids[1], 1)], params)[0]
    norm = policy.chunks[0].decoder.final_layernorm.weight
    with torch.no_grad():
        norm.mul_(0.5)  # a trained step stands in: every logit halves
    try:
        # On CPU the exported tensors share memory with the parameters: copy them before undoing the change.
        new = [(name, t.clone()) for bucket in export_hf_weights(policy) for name, t in bucket]
        engine.update_weights(iter(new), "real-v1")
    finally:
        with torch.no_grad():
            norm.mul_(2.0)
    (after,) = engine.generate([GenerateRequest(ids[1], 1)], params)[0]
    assert after.weight_version == "real-v1"
    old_view = HFEngine(smollm2_dir).score([ids[1]], [after.response_ids])[0]  # the checkpoint's weights
    reference = HFEngine(smollm2_dir)
    reference.update_weights(new, "real-v1")
    expected = reference.score([ids[1]], [after.response_ids])[0]
    assert max(abs(a - b) for a, b in zip(expected, after.logprobs)) < 1e-2  # serves the synced weights ...
    assert max(abs(a - b) for a, b in zip(old_view, after.logprobs)) > 0.1  # ... not the old ones
    assert after.logprobs != before.logprobs


def test_the_main_job_trains_the_real_model_on_its_sglang_rollouts(real_model_server, smollm2_dir, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.loop.test_real_model_e2e import CHAIN

    root = Path(__file__).resolve().parents[1]
    args = ["--config", "examples/real_model/zppo.yaml", f"run.dir={tmp_path}", "run.steps=2", "run.save_every=2",
            f"student.hf_path={smollm2_dir}", "student.engine=sglang", f"student.url={real_model_server}",
            "student.weight_sync.backend=gloo", f"teacher.hf_path={smollm2_dir}", "rollout.n_new=4",
            "rollout.group_size=2", "rollout.teacher_group_size=4", "rollout.max_new_tokens=12",
            "train.micro_batch_size=4", "eval.max_new_tokens=12", f"data.train=[{CHAIN % (0, 40)}]",
            f"data.eval={{chain_sum: [{CHAIN % (1, 4)}]}}"]
    proc = subprocess.run([sys.executable, "pretrain_zppo.py", *args], cwd=root, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "TORCHDYNAMO_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    # SGLang's log-probs of its samples against the Megatron trainer's, step 1 after a real sync (fp32)
    assert all(m["logprob_diff_mean"] < 1e-3 for m in metrics), [m["logprob_diff_mean"] for m in metrics]
    assert all(m["sync_bytes"] > 0 and m["sync_servers"] == 1 for m in metrics)
