"""Training precision (bf16/fp32, optionally FP8 through Transformer Engine) chosen from outside the model.

Three pieces, all pure so they are tested on CPU:

- ``PrecisionConfig``: what the user asks for.
- ``check_precision(cfg, te_version, gpu_capability)``: refuses, with the setting, its value and
  what is missing, a request this machine cannot honour. FP8 failures otherwise surface deep inside
  Transformer Engine (or, worse, as a silent fallback), minutes into start-up on every rank.
- ``transformer_config_fields`` / ``ddp_config_fields``: the request as Megatron-Core field names,
  to set on the bridge's model provider and on ``DistributedDataParallelConfig``.

``detect()`` reads the installed TE version and the current GPU; it is the only impure function.

Sources for the limits below (checked November 2026):

- Minimum TE versions are the gates of ``get_fp8_recipe`` in megatron-core 0.19.2
  (``megatron/core/fp8_utils.py``): Float8CurrentScaling ("tensorwise") needs TE >= 2.2.0.dev0,
  Float8BlockScaling ("blockwise") >= 2.3.0.dev0, MXFP8BlockScaling >= 2.1.0; below 2.1.0 Megatron
  only builds DelayedScaling. TE's own docs agree on when each recipe appeared: the 2.0 API page lists
  DelayedScaling and MXFP8BlockScaling only, the 2.4 page all four.
- Compute capabilities are TE's own checks (``transformer_engine/pytorch/quantization.py``:
  ``_compute_fp8_support``, ``_compute_fp8_block_scaling_support``, ``_compute_mxfp8_support``):
  FP8 needs sm_89 (Ada) or sm_90 (Hopper) and newer; block scaling needs sm_90 and CUDA >= 12.9;
  MXFP8 needs sm_100 (Blackwell) and is not yet supported on sm_120.
- Format and delayed-scaling settings follow Megatron-Bridge 0.6.2's presets
  (``megatron/bridge/training/mixed_precision.py``: ``bf16_with_fp8_delayed_scaling_mixed``,
  ``bf16_with_fp8_current_scaling_mixed``, ``bf16_with_mxfp8_mixed``): "hybrid" (E4M3 forward,
  E5M2 gradients) except MXFP8, which is E4M3 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from megatron_zppo.errors import RunError

DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "fp32": "fp32", "float32": "fp32"}
FP8_RECIPES = ("none", "delayed", "tensorwise", "blockwise", "mxfp8")

MIN_TE_VERSION = {"delayed": "1.0", "tensorwise": "2.2.0.dev0", "blockwise": "2.3.0.dev0", "mxfp8": "2.1.0"}
MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}
CAPABILITY_BELOW = {"mxfp8": (12, 0)}  # TE: "MXFP8 ... is not supported on 12.0+ architectures yet"
MIN_CUDA = {"blockwise": "12.9"}
_WHO = {(8, 9): "Ada or Hopper (sm_89+)", (9, 0): "Hopper (sm_90+)", (10, 0): "Blackwell (sm_100)"}


class PrecisionError(RunError, ValueError):
    """A precision setting this machine cannot run; the message names the setting and the gap."""


@dataclass(frozen=True)
class PrecisionConfig:
    dtype: str = "fp32"  # parameters and activations: "bf16" on GPU; fp32 where CPU tests compare with HF
    fp8: str = "none"  # none | delayed | tensorwise | blockwise | mxfp8 (TE's FP8 GEMMs)
    # Keep the FP8 copy of the weights as the compute parameter and all-gather it in FP8 (saves
    # memory and all-gather bytes; Megatron requires the distributed optimizer for it).
    fp8_param_gather: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise PrecisionError(f"precision.dtype={self.dtype!r} unknown; expected bf16 or fp32")
        object.__setattr__(self, "dtype", DTYPES[self.dtype])  # one spelling from here on
        if self.fp8 not in FP8_RECIPES:
            raise PrecisionError(f"precision.fp8={self.fp8!r} unknown; expected one of {FP8_RECIPES}")
        if self.fp8_param_gather and self.fp8 == "none":
            raise PrecisionError("precision.fp8_param_gather=true needs an FP8 recipe, but precision.fp8 is none")

    @property
    def torch_dtype_name(self) -> str:
        """The spelling ModelConfig and torch use ("bfloat16" / "float32")."""
        return {"bf16": "bfloat16", "fp32": "float32"}[self.dtype]


def _version(text: str, what: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise PrecisionError(f"cannot parse the {what} version {text!r}") from None


def check_precision(
    cfg: PrecisionConfig,
    te_version: str | None,
    gpu_capability: tuple[int, int] | None,
    *,
    cuda_version: str | None = None,
    layer_spec: str = "auto",
    distributed_optimizer: bool = True,
) -> None:
    """Raise ``PrecisionError`` if ``cfg`` cannot run here; return None if it can.

    ``te_version``: Transformer Engine's version string, None when it is not installed.
    ``gpu_capability``: (major, minor) of the training GPU, None without a GPU.
    ``cuda_version``: torch's CUDA version; checked only when given (blockwise needs 12.9).
    """
    if cfg.fp8 == "none":
        if cfg.dtype == "bf16" and gpu_capability is None:
            # The CPU path is checked against HF in fp32 only; bf16 there once died inside Megatron's first
            # forward (its fused bf16 softmax is a CUDA kernel) and has never been checked since.
            raise PrecisionError("precision.dtype='bf16' needs a CUDA GPU, and none is visible (the CPU path is "
                                 "tested in fp32 only); use precision.dtype=fp32 on CPU")
        return
    where = f"precision.fp8={cfg.fp8!r}"
    if layer_spec == "local":
        raise PrecisionError(f"{where} runs FP8 GEMMs inside Transformer Engine layers, but train.layer_spec is "
                             "'local' (plain torch layers); use layer_spec auto or transformer_engine")
    if te_version is None:
        raise PrecisionError(f"{where} needs Transformer Engine, which is not installed (use an NGC PyTorch "
                             "container, see the Dockerfile, or set precision.fp8=none)")
    if gpu_capability is None:
        raise PrecisionError(f"{where} needs a CUDA GPU, and none is visible (set precision.fp8=none on CPU)")
    need = MIN_TE_VERSION[cfg.fp8]
    if _version(te_version, "Transformer Engine") < Version(need):
        raise PrecisionError(f"{where} needs Transformer Engine >= {need} (megatron-core 0.19 builds this recipe "
                             f"only from there); installed: {te_version}")
    cap = tuple(gpu_capability)
    low = MIN_CAPABILITY[cfg.fp8]
    if cap < low:
        raise PrecisionError(f"{where} needs a GPU of compute capability >= {low[0]}.{low[1]} ({_WHO[low]}); "
                             f"this GPU is sm_{cap[0]}{cap[1]}")
    high = CAPABILITY_BELOW.get(cfg.fp8)
    if high is not None and cap >= high:
        raise PrecisionError(f"{where} is not supported by Transformer Engine on sm_{cap[0]}{cap[1]} "
                             f"(needs {low[0]}.{low[1]} <= capability < {high[0]}.{high[1]}); try tensorwise")
    cuda_need = MIN_CUDA.get(cfg.fp8)
    if cuda_need and cuda_version is not None and _version(cuda_version, "CUDA") < Version(cuda_need):
        raise PrecisionError(f"{where} needs CUDA >= {cuda_need} (Transformer Engine's block-scaled GEMM); "
                             f"torch is built with CUDA {cuda_version}")
    if cfg.fp8_param_gather and not distributed_optimizer:
        raise PrecisionError("precision.fp8_param_gather=true needs optimizer.use_distributed_optimizer=true "
                             "(Megatron keeps the FP8 weight shards in its distributed optimizer)")


def transformer_config_fields(cfg: PrecisionConfig) -> dict:
    """Megatron ``TransformerConfig`` fields (set on the bridge's model provider before finalize())."""
    import torch

    fields = {
        "bf16": cfg.dtype == "bf16",
        "fp16": False,
        "params_dtype": getattr(torch, cfg.torch_dtype_name),
        "fp8": None,
        "fp8_param": False,
    }
    if cfg.fp8 == "none":
        return fields
    fields.update(fp8="e4m3" if cfg.fp8 == "mxfp8" else "hybrid", fp8_recipe=cfg.fp8,
                  fp8_param=cfg.fp8_param_gather)
    if cfg.fp8 == "delayed":
        # TE's own DelayedScaling defaults; Megatron's defaults (history 1, most_recent) are tuned for
        # nothing in particular, and the bridge's preset overrides them the same way.
        fields.update(fp8_margin=0, fp8_amax_history_len=1024, fp8_amax_compute_algo="max")
    return fields


def ddp_config_fields(cfg: PrecisionConfig) -> dict:
    """Megatron ``DistributedDataParallelConfig`` fields; Megatron sets fp8_param_gather on both
    configs from one flag (megatron/training/argument_utils.py), and so do we."""
    fields = {"fp8_param_gather": cfg.fp8_param_gather}
    if cfg.fp8 == "mxfp8" and cfg.fp8_param_gather:
        fields["reuse_grad_buf_for_mxfp8_param_ag"] = True  # as the bridge's MXFP8 preset: saves one buffer
    return fields


def detect() -> tuple[str | None, tuple[int, int] | None, str | None]:
    """(TE version, GPU compute capability, torch CUDA version) of this process; None where absent."""
    import importlib.util

    import torch

    te_version = None
    if importlib.util.find_spec("transformer_engine") is not None:
        try:
            import transformer_engine

            te_version = str(transformer_engine.__version__)
        except Exception:  # noqa: BLE001 - an installed but unloadable TE (no CUDA libs) is no TE
            te_version = None
    capability = tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    return te_version, capability, torch.version.cuda
