"""Videos on the Megatron trainer (Qwen3.5-VL through Megatron-Bridge's ``Qwen3VLModel``), on CPU.

The checkpoint of test_qwen35_vl.py with a video processor: HF's own model, fed the same frames
through the same processor and the same timestamped placeholders, is the reference throughout,
with its Gated DeltaNet delta rule computed by definition in float64 (see ``_hf_model``).
"""

import pytest
import torch
import torch.nn.functional as F

from megatron_zppo.train.logprobs import LogprobRequest, SequenceBatch, forward_response_logprobs
from megatron_zppo.train.model import ModelConfig, Policy, build_policy, export_hf_weights
from megatron_zppo.train.parallel import ParallelConfig
from tests.train.qwen35_vl_video_worker import ADVANTAGES, ROWS, old_logprobs, ppo_micro_batches, \
    save_tiny_qwen35_vl_video, vl_video_batch  # fmt: skip
from tests.train.qwen35_vl_worker import IMAGE, START, VIDEO
from tests.train.test_delta_rule import with_float64_delta_rule
from tests.train.test_qwen35 import assert_layout_matches
from tests.train.tolerances import FP32_VS_FP64, ppo_loss_atol
from tests.train.workers import run_worker


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    return save_tiny_qwen35_vl_video(tmp_path_factory.mktemp("tiny_qwen35_vl_video"))


@pytest.fixture(scope="module")
def policy(vl_dir, megatron_world) -> Policy:
    return build_policy(ModelConfig(hf_path=vl_dir), ParallelConfig())


def _split(pixels, grid):
    grids = grid.tolist() if grid is not None else []
    return list(torch.split(pixels, [t * h * w for t, h, w in grids])) if grids else [], grids


def _hf_row_logprobs(hf_model, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Response log-probs and entropies [B, T], one HF forward per row with its images and videos."""
    dtype = next(hf_model.parameters()).dtype
    images, image_grids = _split(batch.pixel_values, batch.image_grid_thw)
    videos, video_grids = _split(batch.pixel_values_videos, batch.video_grid_thw)
    lps, ents = [], []
    for i in range(batch.tokens.shape[0]):
        p, n = int(batch.prompt_lens[i]), int(batch.response_lens[i])
        ids = batch.tokens[i : i + 1, : p + n]
        ki, kv = len(ROWS[i][2]), len(ROWS[i][3])
        kwargs = {}
        if ki:
            kwargs |= dict(pixel_values=torch.cat(images[:ki]).to(dtype), image_grid_thw=torch.tensor(image_grids[:ki]))
            images, image_grids = images[ki:], image_grids[ki:]
        if kv:
            kwargs |= dict(pixel_values_videos=torch.cat(videos[:kv]).to(dtype),
                           video_grid_thw=torch.tensor(video_grids[:kv]))
            videos, video_grids = videos[kv:], video_grids[kv:]
        if kwargs:
            kwargs["mm_token_type_ids"] = (ids == IMAGE).long() + 2 * (ids == VIDEO).long()
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
    """HF's model with its delta rule computed exactly (test_delta_rule.py): video rows' strong forget
    gates make HF's float32 one drift by 5e-5 from the definition, ours does not."""
    from transformers import AutoModelForImageTextToText

    return with_float64_delta_rule(AutoModelForImageTextToText.from_pretrained(vl_dir, dtype=torch.float32))


def test_video_placeholders_become_timestamped_frames_as_prompt_tokens(vl_dir):
    batch = vl_video_batch(vl_dir)
    # 8 frames at 4 fps sampled at 2 fps -> 4 frames -> 2 temporal patches of 2x2 merged tokens;
    # 6 frames -> 4 (min_frames) -> 2 patches of 1x2; 4 frames -> 2 patches of 1x1; 8 of 64x32 -> 2 of 2x1.
    assert [int((row == VIDEO).sum()) for row in batch.tokens] == [2 * 4, 0, 2 * 2, 2 * 1 + 2 * 2]
    assert batch.video_grid_thw.tolist() == [[2, 4, 4], [2, 2, 4], [2, 2, 2], [2, 4, 2]]
    # each temporal patch opens with its own vision-start token, after its timestamp text
    assert [int((row == START).sum()) for row in batch.tokens] == [1 + 2, 0, 1 + 1 + 2, 2 + 4]
    positions = batch.prompt_lens[:, None] + torch.arange(batch.response_width)[None, :]
    scored = batch.tokens.gather(1, positions.clamp(max=batch.tokens.shape[1] - 1))[batch.response_mask()]
    assert scored.numel() == sum(len(r[1]) for r in ROWS) and not (scored == VIDEO).any()


def test_logprobs_and_entropy_with_videos_match_hf(policy, vl_dir):
    batch = vl_video_batch(vl_dir)
    (chunk,) = policy.chunks
    request = LogprobRequest(batch, policy.vocab_size, 4, True)
    with torch.no_grad():
        logprobs, entropy = forward_response_logprobs(chunk, request)
        expected_lp, expected_ent = _hf_row_logprobs(_hf_model(vl_dir).double(), batch)  # float64 reference
    torch.testing.assert_close(logprobs.double(), expected_lp, **FP32_VS_FP64)
    torch.testing.assert_close(entropy.double(), expected_ent, **FP32_VS_FP64)

    other = batch.pixel_values_videos.roll(1, dims=0)  # the same patches, shifted between frames
    with torch.no_grad():
        moved, _ = forward_response_logprobs(chunk, LogprobRequest(
            SequenceBatch(batch.tokens, batch.prompt_lens, batch.response_lens, batch.response_width,
                          batch.pixel_values, batch.image_grid_thw, other, batch.video_grid_thw),
            policy.vocab_size, 4))  # fmt: skip
    change = (moved.double() - logprobs.double()).abs().amax(dim=1)
    assert change[1] == 0 and (change[[0, 2, 3]] > 1e-4).all()  # the videos reach their rows, only theirs


def test_ppo_step_with_videos_matches_a_hand_written_hf_adamw_step(vl_dir, megatron_world):
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


@pytest.mark.slow
def test_tensor_parallel_with_videos_matches_single_process(vl_dir, tmp_path):
    # TP=2 splits the vision tower's heads and MLP, which every video frame goes through, and the
    # Gated DeltaNet heads that the frames' strong forget gates reach (gated_delta_rule_torch.py: with
    # float32 log-decays, TP=2's last-bit differences moved these rows' log-probs by 2e-4). Both runs
    # are float32 at one thread, so only TP's split matmuls differ: 5.2e-6 measured, 1e-5 asserted.
    (single,) = run_worker("qwen35_vl_video_worker.py", vl_dir, tmp_path / "tp1", 1)
    assert_layout_matches(single, run_worker("qwen35_vl_video_worker.py", vl_dir, tmp_path / "tp2", 2, "--tp", "2"),
                          _loss_atol(vl_dir))


def test_samples_with_videos_are_refused_without_a_video_processor():
    from megatron_zppo.train.vision_batch import expand_videos_of_rows

    with pytest.raises(ValueError, match="sample 'g': samples carry videos but the policy checkpoint has no video"):
        expand_videos_of_rows([[1, VIDEO]], [(b"x",)], None, None, None, ["sample 'g'"])


def test_packed_rows_with_videos_equal_the_padded_rows(policy, vl_dir):
    # Videos split into one grid per temporal patch for the multimodal positions: each packed
    # sequence must still take its own videos' grids, in order.
    from tests.train.test_qwen35_vl import assert_packed_equals_padded

    assert_packed_equals_padded(policy.chunks[0], policy.vocab_size, vl_video_batch(vl_dir))
