"""Logit distillation (a baseline): one Megatron update with the teacher inside the trainer and
modelopt's loss equals the same update written by hand on the HF models with torch AdamW."""

import pytest
import torch

from megatron_zppo.train.logprobs import SequenceBatch
from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights
from megatron_zppo.train.parallel import ParallelConfig
from megatron_zppo.train.optimizer import OptimizerConfig, build_optimizer, ddp_config
from megatron_zppo.train.steps import PolicyTrainer
from tests.train.tiny_qwen3 import PROMPTS, RESPONSES, save_tiny_qwen3
from tests.train.tolerances import summed_logprob_terms_atol

OPT = OptimizerConfig(lr=1e-3, eps=1e-4, clip_grad=0.01)  # see test_trainer.py for eps; the clip is active


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny_teacher"), seed=7)


def _hand_step(student_dir, teacher_dir, temperature: float, top_k: int, divergence: str = "forward_kl"):
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    batch = SequenceBatch.from_lists(PROMPTS, RESPONSES)
    s_logits = student(batch.tokens).logits.float() / temperature
    with torch.no_grad():
        t_logits = teacher(batch.tokens).logits.float() / temperature
    total, count, magnitude = 0.0, 0, 0.0
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        rows = slice(len(p) - 1, len(p) - 1 + len(r))  # the positions that predict response tokens
        s, t = s_logits[i, rows], t_logits[i, rows]
        if top_k:  # the teacher's top-k entries only, both distributions renormalised over them
            idx = t.topk(top_k, dim=-1).indices
            s, t = s.gather(-1, idx), t.gather(-1, idx)
        t_logp, s_logp = t.log_softmax(-1), s.log_softmax(-1)
        if divergence == "jsd":  # beta 0.5, written out: 0.5 KL(T || M) + 0.5 KL(S || M)
            p_t, p_s = t_logp.exp(), s_logp.exp()
            m = 0.5 * p_t + 0.5 * p_s
            total = total + 0.5 * (p_t * (t_logp - m.log())).sum() + 0.5 * (p_s * (s_logp - m.log())).sum()
        else:
            total = total + (t_logp.exp() * (t_logp - s_logp)).sum()  # modelopt's Megatron losses: no T^2 factor
        magnitude += float((t_logp.exp() * (t_logp.abs() + s_logp.abs())).sum())  # what the KL sums (and cancels)
        count += len(r)
    loss = total / count
    atol = summed_logprob_terms_atol(magnitude / count)
    loss.backward()
    params = dict(student.named_parameters())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params.values(), OPT.clip_grad))
    decay = [p for n, p in params.items() if p.dim() > 1]
    no_decay = [p for n, p in params.items() if p.dim() <= 1]
    torch.optim.AdamW([{"params": decay, "weight_decay": OPT.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                      lr=OPT.lr, betas=(OPT.beta1, OPT.beta2), eps=OPT.eps).step()
    return float(loss), atol, grad_norm, {n: p.detach() for n, p in student.state_dict().items()}


@pytest.mark.parametrize("temperature,top_k,divergence", [(1.0, 0, "forward_kl"), (2.0, 0, "forward_kl"),
                                                          (2.0, 5, "forward_kl"), (1.0, 0, "jsd")])
def test_kd_step_matches_a_hand_written_step(tiny_qwen3_dir, tiny_teacher_dir, megatron_world, temperature, top_k,
                                             divergence):
    from megatron.core.utils import get_model_config

    from megatron_zppo.train.logit_distill import KDMicroBatch, make_criterion, output_logits_fn

    policy = build_policy(ModelConfig(hf_path=tiny_qwen3_dir), ParallelConfig(), ddp_config=ddp_config(OPT))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2)  # several chunks per row
    teacher = build_policy(ModelConfig(hf_path=tiny_teacher_dir), ParallelConfig())
    full = SequenceBatch.from_lists(PROMPTS, RESPONSES)
    micro = [SequenceBatch.from_lists(PROMPTS[i:i + 2], RESPONSES[i:i + 2], response_width=full.response_width)
             for i in (0, 2)]
    hidden = trainer.teacher_hidden(teacher, micro)
    criterion = make_criterion(get_model_config(policy.chunks[0]), temperature, top_k, divergence)
    stats = trainer.kd_step([KDMicroBatch(b, h) for b, h in zip(micro, hidden)],
                            output_logits_fn(teacher.chunks[-1]), criterion)
    after = {n: t for bucket in export_hf_weights(policy) for n, t in bucket}

    loss, atol, grad_norm, expected = _hand_step(tiny_qwen3_dir, tiny_teacher_dir, temperature, top_k, divergence)
    # A small KL of large cancelling terms: bounded by their size (tolerances.py), not by its own.
    assert loss > (0.001 if divergence == "jsd" else 0.002) and stats["loss"] == pytest.approx(loss, rel=1e-5, abs=atol)
    assert stats["grad_norm"] == pytest.approx(grad_norm, rel=1e-4) and grad_norm > OPT.clip_grad
    for name, tensor in expected.items():
        torch.testing.assert_close(after[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("layout,top_k,divergence", [
    (("--tp", "2"), 0, "forward_kl"), (("--tp", "2"), 5, "forward_kl"), (("--tp", "2"), 0, "jsd"),
    pytest.param(("--pp", "2"), 0, "forward_kl", marks=pytest.mark.slow)])
def test_kd_step_under_tensor_and_pipeline_parallelism_equals_one_process(tiny_qwen3_dir, tiny_teacher_dir,
                                                                          tmp_path, layout, top_k, divergence):
    from tests.train.workers import run_worker

    args = ("--teacher-dir", tiny_teacher_dir, "--top-k", str(top_k), "--divergence", divergence)
    (ref,) = run_worker("kd_worker.py", tiny_qwen3_dir, tmp_path / "one", 1, *args)
    ranks = run_worker("kd_worker.py", tiny_qwen3_dir, tmp_path / "two", 2, *args, *layout)
    _, atol, _, _ = _hand_step(tiny_qwen3_dir, tiny_teacher_dir, 1.0, top_k, divergence)
    for rank in ranks:
        if rank["last_stage"]:  # the vocab-parallel loss summed over TP shards, not one shard's part
            assert rank["stats"]["loss"] == pytest.approx(ref["stats"]["loss"], rel=1e-5, abs=atol)
        assert rank["stats"]["grad_norm"] == pytest.approx(ref["stats"]["grad_norm"], rel=1e-5)
        for name, weight in ref["weights"].items():
            torch.testing.assert_close(rank["weights"][name], weight, atol=1e-6, rtol=1e-5, msg=name)
