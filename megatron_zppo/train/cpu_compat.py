"""Every shim Megatron-Core 0.19 and Megatron-Bridge 0.6 need to run without a GPU, in one place.

Megatron-Core assumes CUDA in literal calls (``torch.cuda.current_device()``, ``device="cuda"``,
``param.type() == "torch.cuda.FloatTensor"``, CUDA streams). With the CUDA build of torch on a
machine without a GPU these fail as "Found no NVIDIA driver". Each shim below is named after the
call it works around. ``enable()`` applies them only when ``torch.cuda.is_available()`` is False;
on a GPU machine it changes nothing but the Transformer Engine import stand-in, and that only where
TE is not installed. We never edit the installed packages.

The shims are process-wide, so they are switched on once per process by its entry point, before
anything imports the bridge: ``pretrain_zppo.py``, each tool, benchmark and torchrun worker that
builds Megatron models, and the tests' Megatron fixtures. Library modules never call ``enable()``;
``parallel.initialize``, the first step of every Megatron build, calls ``require_enabled()`` so that
an entry point that forgot says so at once instead of failing deep inside Megatron.

The model-specific shims live beside their models; every one, by name:

| where | shim | works around |
|---|---|---|
| here | ``CudaToCpuMode``, ``_patch_cuda_runtime`` | literal CUDA devices, streams and tensor-type names |
| here | ``_TransformerEngineStandIn`` | the bridge importing TE where TE is absent |
| ``qwen35_local_spec.py`` | ``ZeroCenteredRMSNorm``, ``HeadParallelRMSNorm`` | no non-TE zero-centred norm; GDN's TP-shared norm grad |
| ``qwen35_local_spec.py`` | ``TorchLayerNormColumnParallelLinear``, ``local_block_spec`` | TE-only fused norm + linear and hybrid block spec |
| ``qwen35_local_spec.py`` | ``enable_torch_gated_delta_rule`` (``torch_l2norm``) | FLA's Triton kernels (no CPU driver) |
| ``gated_delta_rule_torch.py`` | ``chunk_gated_delta_rule`` (via the above) | Megatron's torch delta rule's float32 log-decays |
| ``qwen35_vl.py`` | ``local_vision_modules``, ``PackedVisionAttention``, ``TorchLayerNorm`` | the ViT's TE classes; per-image attention |
| ``qwen35_vl.py`` | ``exact_gelu_merger`` (GPU too) | the bridge's tanh GELU in the patch merger |
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import torch
from torch.overrides import TorchFunctionMode

_APPLIED: list[str] = []
_ENABLED = False  # enable() has run in this process (on a GPU with TE it applies nothing)


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int as a device argument means a CUDA ordinal to torch.
    return isinstance(device, int) and not isinstance(device, bool)


class CudaToCpuMode(TorchFunctionMode):
    """Run Megatron's CUDA-only tensor code on CPU.

    - ``torch.zeros(..., device="cuda")`` in the pipeline schedules (PP=1 too), the optimizer's
      loss-scale and found-inf tensors and grad clipping: the device argument is mapped to CPU.
    - ``tensor.cuda()`` / ``tensor.to("cuda")`` in the optimizer and checkpoint code: a CPU no-op.
    - ``param.type() == "torch.cuda.FloatTensor"`` in the optimizers and ``clip_grad_by_total_norm``:
      the argument-less ``Tensor.type()`` reports the CUDA type name so those checks accept CPU
      parameters (the dtype part of the name stays true).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _NullStream:
    """Stands in for ``torch.cuda.Stream``: CPU work is already ordered, so waits are no-ops."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, stream) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def synchronize(self) -> None:
        pass


def _null_stream_context(stream=None):
    return contextlib.nullcontext()


class _TransformerEngineStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Lets ``megatron.bridge.peft.lora_layers`` import without Transformer Engine.

    That one bridge module does ``import transformer_engine.pytorch as te`` with no fallback and uses
    ``te.ops.Sequential`` in annotations; the bridge package imports it eagerly, so without TE even
    ``from megatron.bridge import AutoBridge`` fails. We wrap the loader of that module only: the
    stand-in sits in ``sys.modules`` while the module body runs and is removed afterwards, so
    Megatron-Core's own ``try: import transformer_engine`` checks still see TE as absent.
    """

    TARGET = "megatron.bridge.peft.lora_layers"
    NAMES = ("transformer_engine", "transformer_engine.pytorch")

    def find_spec(self, name, path, target=None):
        if name != self.TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        self._real_loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._real_loader.create_module(spec)

    def exec_module(self, module) -> None:
        te, te_pytorch = types.ModuleType(self.NAMES[0]), types.ModuleType(self.NAMES[1])
        te_pytorch.ops = types.SimpleNamespace(Sequential=type("Sequential", (), {}))
        te.pytorch = te_pytorch
        sys.modules.update(dict(zip(self.NAMES, (te, te_pytorch))))
        try:
            self._real_loader.exec_module(module)
        finally:
            for name in self.NAMES:
                sys.modules.pop(name, None)


def _patch_cuda_runtime() -> None:
    # Rotary embeddings, the global memory buffer, DDP buffers and p2p shapes allocate on
    # torch.cuda.current_device(); "cpu" is a valid device argument for all of them.
    torch.cuda.current_device = lambda: "cpu"
    _APPLIED.append("torch.cuda.current_device->cpu")
    # Checkpoint writers and p2p communication synchronise the device; CPU ops are synchronous.
    torch.cuda.synchronize = lambda device=None: None
    _APPLIED.append("torch.cuda.synchronize->no-op")
    # 0.19's grad sync waits on torch.cuda.current_stream() and may open a comm stream.
    torch.cuda.current_stream = lambda device=None: _NullStream()
    torch.cuda.Stream = _NullStream
    torch.cuda.stream = _null_stream_context
    _APPLIED.append("torch.cuda streams->null streams")
    # Activation recomputation (tensor_parallel.checkpoint) saves and restores the CUDA RNG state
    # around each recomputed region; without a GPU there is no CUDA generator to save. (Restoring
    # goes through torch.cuda._lazy_call, which only queues the call while CUDA is uninitialised.)
    torch.cuda.random.get_rng_state = lambda device="cuda": torch.empty(0, dtype=torch.uint8)
    _APPLIED.append("torch.cuda.random.get_rng_state->empty state")


def _install_te_stand_in() -> None:
    if importlib.util.find_spec("transformer_engine") is not None:
        return
    sys.meta_path.insert(0, _TransformerEngineStandIn())
    _APPLIED.append("transformer_engine stand-in for megatron.bridge.peft.lora_layers")


def enable() -> list[str]:
    """Apply the shims once per process; returns the names of those applied.

    The CUDA shims only without a GPU. The TE stand-in wherever TE is absent, GPU or not: a CUDA
    machine without TE (such as the one benchmarks/gpu_check.py was run on) cannot import the bridge
    without it either. With a GPU and TE this changes nothing and returns an empty list.
    """
    global _ENABLED
    if _ENABLED:
        return list(_APPLIED)
    _ENABLED = True
    _install_te_stand_in()
    if torch.cuda.is_available():
        return list(_APPLIED)
    _patch_cuda_runtime()
    CudaToCpuMode().__enter__()  # left active for the life of the process, on purpose
    _APPLIED.append("CudaToCpuMode (device='cuda'->cpu, .cuda() no-op, Tensor.type() names)")
    return list(_APPLIED)


def require_enabled(what: str) -> None:
    """Refuse to go on in a process whose entry point has not called ``enable()``.

    Without the shims a CPU run fails later and far from the cause ("Found no NVIDIA driver" inside
    Megatron, or the bridge's import of Transformer Engine); this names the missing line instead.
    """
    if not _ENABLED:
        raise RuntimeError(f"{what}: the process's entry point must call megatron_zppo.train.cpu_compat.enable() "
                           "once, before it builds Megatron models (see cpu_compat's docstring)")


def seed_model_parallel_rng(seed: int) -> None:
    """Seed Megatron's tensor-parallel RNG tracker.

    The default tracker snapshots ``torch.cuda.get_rng_state()``, which needs a GPU. On CPU we use
    Megatron's own inference tracker, whose ``fork()`` is a no-op: our models run without dropout
    and take their weights from a checkpoint, so the per-TP-rank streams are never drawn from.
    """
    from megatron.core import tensor_parallel

    on_cpu = not torch.cuda.is_available()
    tensor_parallel.model_parallel_cuda_manual_seed(
        seed, inference_rng_tracker=on_cpu, force_reset_rng=on_cpu
    )
