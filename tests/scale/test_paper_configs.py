from pathlib import Path

import pytest

from megatron_zppo.config import load_config
from megatron_zppo.core.reformulate import fraction_count

PAPER = sorted(Path("examples/paper").glob("qwen35_*/zppo.yaml"))


def test_there_is_one_config_per_paper_student():
    assert [p.parent.name for p in PAPER] == ["qwen35_0.8b", "qwen35_2b", "qwen35_4b", "qwen35_9b"]


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.parent.name)
def test_paper_configs_carry_the_papers_hyperparameters(path):
    c = load_config(str(path), [])
    assert (c.run.algorithm, c.run.steps, c.run.updates_per_step) == ("zppo", 200, 4)
    assert (c.rollout.n_new, c.rollout.group_size, c.rollout.teacher_group_size) == (384, 8, 4)
    assert (c.rollout.max_prompt_tokens, c.rollout.max_new_tokens) == (4096, 12288)
    assert (c.method.tau, c.method.rho_aug, c.buffer.rho_replay, c.buffer.capacity) == (0.5, 0.25, 0.25, 10_000)
    assert fraction_count(c.method.rho_aug, c.rollout.n_new) == 96
    assert (c.loss.eps_low, c.loss.eps_high, c.loss.dual_clip_c, c.loss.kl_coef) == (0.2, 0.28, 10.0, 0.0)
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.beta1, c.optimizer.beta2, c.optimizer.eps,
            c.optimizer.clip_grad) == (1e-6, 0.1, 0.9, 0.999, 1e-8, 1.0)
    assert (c.student.temperature, c.student.top_p, c.teacher.temperature) == (1.0, 1.0, 1.0)
    assert (c.eval.temperature, c.eval.top_p, c.eval.top_k, c.eval.presence_penalty) == (0.6, 0.95, 20, 1.5)
    assert c.advantage.normalize == "excluding_zero" and c.precision.dtype == "bf16"
    assert c.student.engine == c.teacher.engine == "sglang"
    z = c.method.zppo
    assert (c.method.name, c.buffer.enabled, z.bcq, z.ncq, z.compression) == ("zppo", True, True, True, True)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.parent.name)
def test_every_preset_runs_on_a_paper_recipe_as_the_preset_says(path):
    # A recipe that pinned a key a preset sets (buffer.enabled, a ZPPO switch) would silently keep
    # it under run.algorithm=grpo or an ablation: explicit values win over presets.
    from megatron_zppo.config import PRESETS

    for algorithm, keys in PRESETS.items():
        c = load_config(str(path), [f"run.algorithm={algorithm}"])
        for key, value in keys.items():
            node = c
            for part in key.split("."):
                node = getattr(node, part)
            assert node == value, (algorithm, key)
