"""Qwen3.5 vision-language students on the Megatron trainer, on CPU.

A tiny random HF ``Qwen3_5ForConditionalGeneration`` (hybrid GDN text model, two-block vision tower)
goes through ``Qwen35VLBridge`` into Megatron's ``Qwen3VLModel``, built from the local specs of
``megatron_zppo.train.qwen35_vl``. HF's own model, fed the same images through the same image
processor, is the reference throughout.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from megatron_zppo.train.logprobs import LogprobRequest, SequenceBatch, forward_response_logprobs
from megatron_zppo.train.model import ModelConfig, Policy, build_policy, export_hf_weights
from megatron_zppo.train.parallel import ParallelConfig
from tests.train.qwen35_vl_worker import ADVANTAGES, IMAGE, ROWS, old_logprobs, ppo_micro_batches, \
    save_tiny_qwen35_vl, vl_batch  # fmt: skip
from tests.train.qwen35_worker import LAYER_TYPES
from tests.train.tolerances import FP32_VS_FP64, ppo_loss_atol
from tests.train.test_qwen35 import assert_layout_matches, assert_resume_is_exact
from tests.train.workers import run_worker


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    return save_tiny_qwen35_vl(tmp_path_factory.mktemp("tiny_qwen35_vl"))


@pytest.fixture(scope="module")
def policy(vl_dir, megatron_world) -> Policy:
    return build_policy(ModelConfig(hf_path=vl_dir), ParallelConfig())


def _hf_row_logprobs(hf_model, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Response log-probs and entropies [B, T] of the full ``ROWS`` batch, one HF forward per row
    with that row's images."""
    grids = batch.image_grid_thw.tolist()
    patches = [t * h * w for t, h, w in grids]
    pixels = list(torch.split(batch.pixel_values, patches))
    lps, ents = [], []
    for i in range(batch.tokens.shape[0]):
        p, n = int(batch.prompt_lens[i]), int(batch.response_lens[i])
        ids = batch.tokens[i : i + 1, : p + n]
        k = len(ROWS[i][2])  # this row's images
        kwargs = {}
        if k:
            kwargs = dict(pixel_values=torch.cat(pixels[:k]), image_grid_thw=torch.tensor(grids[:k]),
                          mm_token_type_ids=(ids == IMAGE).long())
            kwargs["pixel_values"] = kwargs["pixel_values"].to(next(hf_model.parameters()).dtype)
            pixels, grids = pixels[k:], grids[k:]
        logp = torch.log_softmax(hf_model(input_ids=ids, **kwargs).logits[0], dim=-1)[p - 1 : p - 1 + n]
        pad = (0, batch.response_width - n)
        lps.append(F.pad(logp.gather(-1, ids[0, p:, None])[:, 0], pad))
        ents.append(F.pad(-(logp.exp() * logp).sum(-1), pad))
    return torch.stack(lps), torch.stack(ents)


def _loss_atol(vl_dir) -> float:
    """The float32 error bound of the PPO loss on this mini-batch (tolerances.ppo_loss_atol)."""
    batch, old = old_logprobs(vl_dir)
    with torch.no_grad():
        logprobs, _ = _hf_row_logprobs(_hf_model(vl_dir), batch)
    return ppo_loss_atol(logprobs, old, ADVANTAGES, batch.response_mask())


def _hf_model(vl_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(vl_dir, dtype=torch.float32)


def test_build_gives_a_vision_tower_and_the_hybrid_language_model(policy):
    from megatron.bridge.models.qwen_vl.modelling_qwen3_vl.model import Qwen3VLModel
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet

    (chunk,) = policy.chunks
    assert isinstance(chunk, Qwen3VLModel) and len(chunk.vision_model.decoder.layers) == 2
    kinds = ["linear_attention" if isinstance(layer.self_attention, GatedDeltaNet) else "full_attention"
             for layer in chunk.language_model.decoder.layers]  # fmt: skip
    assert kinds == LAYER_TYPES
    assert chunk.vision_model.merger.activation_func is F.gelu  # HF's exact GELU, not the bridge's tanh


def test_export_returns_every_hf_tensor_bit_exact(policy, vl_dir):
    expected = load_file(f"{vl_dir}/model.safetensors")
    exported = dict(pair for bucket in export_hf_weights(policy) for pair in bucket)
    assert exported.keys() == expected.keys()
    assert any(name.startswith("model.visual.") for name in expected)
    for name, tensor in expected.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name


def test_logprobs_and_entropy_with_images_match_hf(policy, vl_dir):
    batch = vl_batch(vl_dir)
    (chunk,) = policy.chunks
    request = LogprobRequest(batch, policy.vocab_size, 4, True)
    with torch.no_grad():
        logprobs, entropy = forward_response_logprobs(chunk, request)
        expected_lp, expected_ent = _hf_row_logprobs(_hf_model(vl_dir).double(), batch)  # float64 reference
    assert expected_lp.min() < -8.0  # far from uniform (log 250 = 5.5): the layers really matter
    torch.testing.assert_close(logprobs.double(), expected_lp, **FP32_VS_FP64)
    torch.testing.assert_close(entropy.double(), expected_ent, **FP32_VS_FP64)

    merger = chunk.vision_model.merger
    try:  # the bridge's own merger activation: visibly off on every row with an image
        merger.activation_func = lambda x: F.gelu(x, approximate="tanh")
        with torch.no_grad():
            tanh_lp, _ = forward_response_logprobs(chunk, request)
    finally:
        merger.activation_func = F.gelu
    gap = (tanh_lp.double() - expected_lp).abs().amax(dim=1)
    assert gap[1] < FP32_VS_FP64["atol"] and (gap[[0, 2, 3]] > 1e-4).all()


def test_images_change_the_logprobs_of_their_rows_only(policy, vl_dir):
    batch = vl_batch(vl_dir)
    (chunk,) = policy.chunks
    other = batch.pixel_values.roll(1, dims=0)  # the same patches, shifted between images
    with torch.no_grad():
        lp, _ = forward_response_logprobs(chunk, LogprobRequest(batch, policy.vocab_size, 4))
        moved, _ = forward_response_logprobs(chunk, LogprobRequest(
            SequenceBatch(batch.tokens, batch.prompt_lens, batch.response_lens, batch.response_width, other,
                          batch.image_grid_thw), policy.vocab_size, 4))  # fmt: skip
    change = (moved - lp).abs().amax(dim=1)
    assert change[1] == 0 and (change[[0, 2, 3]] > 1e-3).all()


def assert_packed_equals_padded(chunk, vocab_size: int, batch: SequenceBatch) -> list[torch.Tensor]:
    """``batch``'s rows as one packed (THD) row give exactly its padded rows' log-probs, entropies
    and multimodal positions; returns the padded log-probs and entropies."""
    positions = []  # the multimodal position ids [3, rows, S] the language model is given
    hook = chunk.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: positions.append(kwargs["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad():
            padded = forward_response_logprobs(chunk, LogprobRequest(batch, vocab_size, 4, True))
            packed = forward_response_logprobs(chunk, LogprobRequest(dataclasses.replace(batch, packed=True),
                                                                     vocab_size, 4, True))
    finally:
        hook.remove()
    for got, expected in zip(packed, padded):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Each sequence's positions are its own row's (what HF and SGLang use), not continued from the
    # sequence before it: a uniform shift would leave the toy's numbers equal, not a long run's.
    lengths = (batch.prompt_lens + batch.response_lens).tolist()
    row_positions, packed_positions = positions
    segments = torch.split(packed_positions[:, 0], lengths, dim=1)
    for i, (segment, n) in enumerate(zip(segments, lengths)):
        assert torch.equal(segment, row_positions[:, i, :n]), f"row {i}"
    return padded


def test_packed_rows_with_images_equal_the_padded_rows(policy, vl_dir):
    # One THD row holding all four samples (three with images, one with two): each sequence's
    # multimodal positions restart at its start, and its attention and delta-rule state stop at its end.
    from megatron_zppo.train.packed_sequences import packed_row

    batch = vl_batch(vl_dir)
    (chunk,) = policy.chunks
    padded_lp, _ = assert_packed_equals_padded(chunk, policy.vocab_size, batch)
    # Not equal by accident: the same tokens as one ordinary row (no boundaries) score the last
    # sample, which has an image, clearly differently.
    row = packed_row(batch.tokens, batch.prompt_lens + batch.response_lens)
    last = int(row.starts[-1]) + int(batch.prompt_lens[-1])
    boundless = dataclasses.replace(batch, tokens=row.tokens, prompt_lens=torch.tensor([last]),
                                    response_lens=batch.response_lens[-1:])
    with torch.no_grad():
        leaked, _ = forward_response_logprobs(chunk, LogprobRequest(boundless, policy.vocab_size, 4))
    n = int(batch.response_lens[-1])
    assert (leaked[0, :n] - padded_lp[-1, :n]).abs().max() > 1e-3


def test_image_tokens_are_prompt_tokens_never_scored(vl_dir):
    batch = vl_batch(vl_dir)
    # Placeholders expanded to the images' vision tokens: (64x48 -> 2x2 merged) + (32x32 -> 1) + (96x64 -> 3x2) ...
    assert [int((row == IMAGE).sum()) for row in batch.tokens] == [4, 0, 1 + 6, 2]
    positions = batch.prompt_lens[:, None] + torch.arange(batch.response_width)[None, :]
    scored = batch.tokens.gather(1, positions.clamp(max=batch.tokens.shape[1] - 1))[batch.response_mask()]
    assert scored.numel() == sum(len(r) for _, r, _ in ROWS) and not (scored == IMAGE).any()


def test_ppo_step_with_images_matches_a_hand_written_hf_adamw_step(vl_dir, megatron_world):
    from megatron_zppo.core.loss import policy_loss
    from megatron_zppo.train.optimizer import build_optimizer, ddp_config
    from megatron_zppo.train.steps import PolicyTrainer
    from tests.train.test_trainer import LOSS, OPT

    policy = build_policy(ModelConfig(hf_path=vl_dir), ParallelConfig(), ddp_config=ddp_config(OPT))
    trainer = PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2)
    before = {name: t.clone() for bucket in export_hf_weights(policy) for name, t in bucket}
    stats = trainer.ppo_step(ppo_micro_batches(vl_dir, rows_per_micro=2), LOSS)
    after = dict(pair for bucket in export_hf_weights(policy) for pair in bucket)

    hf_model = _hf_model(vl_dir)
    batch, old = old_logprobs(vl_dir)
    mask = batch.response_mask()
    logprobs, _ = _hf_row_logprobs(hf_model, batch)
    loss, _ = policy_loss(logprobs, old, ADVANTAGES, mask, LOSS, normalizer=float(mask.sum()))
    loss.backward()
    params = dict(hf_model.named_parameters())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params.values(), OPT.clip_grad))
    groups = [[p for p in params.values() if p.dim() > 1], [p for p in params.values() if p.dim() <= 1]]
    torch.optim.AdamW([{"params": groups[0], "weight_decay": OPT.weight_decay},
                       {"params": groups[1], "weight_decay": 0.0}],
                      lr=OPT.lr, betas=(OPT.beta1, OPT.beta2), eps=OPT.eps).step()  # fmt: skip
    expected = {n: p.detach() for n, p in hf_model.state_dict().items()}

    assert stats["loss"] == pytest.approx(float(loss), rel=1e-5,
                                          abs=ppo_loss_atol(logprobs.detach(), old, ADVANTAGES, mask))
    assert stats["grad_norm"] == pytest.approx(grad_norm, rel=1e-4) and grad_norm > OPT.clip_grad
    assert after.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (after[name] - before[name]).abs().max() > 0, f"{name} was not updated"
        torch.testing.assert_close(after[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_ppo_step_on_packed_rows_with_images_equals_the_padded_step(vl_dir, megatron_world):
    from megatron_zppo.train.optimizer import build_optimizer, ddp_config
    from megatron_zppo.train.steps import PolicyTrainer
    from tests.train.test_trainer import LOSS, OPT

    results = []
    for packed in (False, True):
        policy = build_policy(ModelConfig(hf_path=vl_dir), ParallelConfig(), ddp_config=ddp_config(OPT))
        trainer = PolicyTrainer(policy, *build_optimizer(policy, OPT), chunk_size=2, variable_shapes=packed)
        micro = [dataclasses.replace(mb, sequences=dataclasses.replace(mb.sequences, packed=packed))
                 for mb in ppo_micro_batches(vl_dir, rows_per_micro=2)]
        stats = trainer.ppo_step(micro, LOSS)
        results.append((stats, dict(pair for bucket in export_hf_weights(policy) for pair in bucket)))
    (padded, w_padded), (stats, w_packed) = results
    assert stats["loss"] == pytest.approx(padded["loss"], rel=1e-5, abs=_loss_atol(vl_dir))
    assert stats["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-4)
    for name, w in w_padded.items():
        torch.testing.assert_close(w_packed[name], w, atol=1e-6, rtol=1e-5, msg=name)


def test_distributed_checkpoint_resumes_the_vision_language_model_exactly(vl_dir, megatron_world, tmp_path):
    assert_resume_is_exact(vl_dir, lambda: ppo_micro_batches(vl_dir, 2), tmp_path / "ckpt")


@pytest.fixture(scope="module")
def single_process_step(vl_dir, tmp_path_factory) -> dict:
    (rank0,) = run_worker("qwen35_vl_worker.py", vl_dir, tmp_path_factory.mktemp("vl_tp1") / "out", 1)
    return rank0


@pytest.mark.slow
@pytest.mark.parametrize("layout", [("--tp", "2"), ("--pp", "2"), ("--tp", "2", "--packed"), ("--pp", "2", "--packed")],
                         ids=["tp2", "pp2", "tp2-packed", "pp2-packed"])
def test_tensor_and_pipeline_parallel_match_single_process(vl_dir, single_process_step, tmp_path, layout):
    # TP=2 splits the vision tower's heads and MLP too; PP=2 puts the vision tower on the first
    # stage only, while every stage derives the multimodal positions from tokens and image grids.
    # "packed": each micro-batch's rows as one THD row (of its own length: variable shapes through
    # the pipeline), against the padded rows of one process.
    assert_layout_matches(single_process_step, run_worker("qwen35_vl_worker.py", vl_dir, tmp_path / "out", 2, *layout),
                          _loss_atol(vl_dir))


def test_an_image_placeholder_without_its_vision_start_token_is_refused(vl_dir):
    from transformers import AutoImageProcessor

    from megatron_zppo.train.vision_batch import expand_images
    from tests.train.qwen35_vl_worker import START, row_images

    processor = AutoImageProcessor.from_pretrained(vl_dir)
    image = row_images()[0]
    ok, _, _ = expand_images([[5, START, IMAGE, 6]], [image], processor, IMAGE, ["row"], START)
    assert ok[0][:2] == [5, START] and ok[0].count(IMAGE) == 4
    with pytest.raises(ValueError, match="sample 'g1': image placeholder at position 1 does not follow the vision-st"):
        expand_images([[5, IMAGE, 6]], [image], processor, IMAGE, ["sample 'g1'"], START)
    with pytest.raises(ValueError, match="samples carry images but the policy is a text-only model"):
        expand_images([[5, START, IMAGE]], [image], None, IMAGE, ["row"])
    with pytest.raises(ValueError, match="holds 0 image placeholder"):
        expand_images([[5, 6]], [image], processor, IMAGE, ["row"], START)
