"""The optimizer: AdamW through Megatron's (distributed) optimizer at a constant learning rate.

`OptimizerConfig` is the YAML section `optimizer`. It is kept light (no Megatron at import) so the
run's config can hold it; Megatron is imported when the optimizer is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from megatron_zppo.config_io import Range

if TYPE_CHECKING:
    from megatron_zppo.train.model import Policy


@dataclass(frozen=True)
class OptimizerConfig:
    lr: Annotated[float, Range(ge=0)] = 1e-6  # learning rate, held constant by build_optimizer's scheduler
    beta1: Annotated[float, Range(ge=0, lt=1)] = 0.9  # Adam's first-moment decay
    beta2: Annotated[float, Range(ge=0, lt=1)] = 0.999  # Adam's second-moment decay
    eps: Annotated[float, Range(gt=0)] = 1e-8  # Adam's denominator term
    weight_decay: Annotated[float, Range(ge=0)] = 0.1  # decoupled (AdamW); Megatron skips biases and norm weights
    clip_grad: Annotated[float, Range(ge=0)] = 1.0  # max global gradient norm; 0: no clipping
    use_distributed_optimizer: bool = True  # shard optimizer state over data-parallel ranks


def ddp_config(cfg: OptimizerConfig):
    """Megatron DDP settings matching ``cfg``; pass to ``build_policy`` for a trainable policy."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
    )


def build_optimizer(policy: Policy, cfg: OptimizerConfig):
    """Megatron's optimizer plus its param scheduler, returned as (optimizer, scheduler).

    The scheduler is not optional even at a constant lr: Megatron puts norm weights and biases in
    a group with ``wd_mult=0`` but leaves that group's ``weight_decay`` at the full value, and
    only ``OptimizerParamScheduler.step`` multiplies the two. Without it norms get decayed.
    """
    from megatron.core import optimizer as megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.utils import get_model_config

    model_config = get_model_config(policy.chunks[0])
    optimizer = megatron_optimizer.get_megatron_optimizer(
        megatron_optimizer.OptimizerConfig(
            optimizer="adam",
            lr=cfg.lr,
            min_lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.beta1,
            adam_beta2=cfg.beta2,
            adam_eps=cfg.eps,
            clip_grad=cfg.clip_grad,
            bf16=model_config.bf16,
            params_dtype=model_config.params_dtype,
            use_distributed_optimizer=cfg.use_distributed_optimizer,
        ),
        policy.chunks,
    )
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=cfg.lr,
        max_lr=cfg.lr,
        min_lr=cfg.lr,
        lr_warmup_steps=0,
        lr_decay_steps=1,
        lr_decay_style="constant",
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=1,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
    )
    return optimizer, scheduler
