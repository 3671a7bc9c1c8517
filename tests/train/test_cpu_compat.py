"""The CPU shims: what they make work without a GPU, and that with CUDA only the TE import stand-in remains."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from megatron_zppo.train import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less path")


def test_enable_maps_megatron_cuda_idioms_to_cpu():
    cpu_compat.enable()
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.ones(2).cuda().device.type == "cpu"
    assert torch.ones(2).to("cuda").device.type == "cpu"
    # Megatron's optimizers only accept parameters whose type() names a CUDA tensor.
    assert torch.nn.Parameter(torch.ones(2)).type() == "torch.cuda.FloatTensor"
    assert torch.ones(2, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.tensor([1.0], device=torch.cuda.current_device()).device.type == "cpu"
    torch.cuda.synchronize()
    torch.cuda.current_stream().wait_stream(torch.cuda.Stream())


def test_enable_is_idempotent():
    first = cpu_compat.enable()
    assert cpu_compat.enable() == first
    assert torch._C._len_torch_function_stack() == 1  # one CudaToCpuMode, not one per call


def test_bridge_imports_without_transformer_engine_and_te_stays_absent():
    cpu_compat.enable()
    from megatron.bridge import AutoBridge  # noqa: F401
    from megatron.core.extensions import transformer_engine as te_ext

    assert "transformer_engine" not in sys.modules
    assert not te_ext.HAVE_TE


def test_with_cuda_only_the_te_stand_in_is_applied_and_the_bridge_imports():
    # A fresh interpreter: the shims are process-wide once applied, so this process cannot show it.
    # TE is not installed here, as on the lent GPU machine: its stand-in is the one change, since the
    # bridge cannot be imported without it on a GPU either.
    script = textwrap.dedent(
        """
        import sys, torch
        torch.cuda.is_available = lambda: True
        before = (torch.cuda.current_device, torch.cuda.synchronize, torch.cuda.current_stream,
                  torch.cuda.Stream, torch.cuda.stream)
        finders = list(sys.meta_path)
        from megatron_zppo.train import cpu_compat
        applied = cpu_compat.enable()
        assert applied == ["transformer_engine stand-in for megatron.bridge.peft.lora_layers"], applied
        after = (torch.cuda.current_device, torch.cuda.synchronize, torch.cuda.current_stream,
                 torch.cuda.Stream, torch.cuda.stream)
        assert before == after, "a CUDA shim was applied although CUDA is available"
        assert torch._C._len_torch_function_stack() == 0
        assert [type(f).__name__ for f in sys.meta_path if f not in finders] == ["_TransformerEngineStandIn"]
        assert cpu_compat.enable() == applied
        from megatron.bridge import AutoBridge  # noqa: F401
        assert "transformer_engine" not in sys.modules
        print("stand-in only")
        """
    )
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stand-in only" in result.stdout


def test_a_megatron_world_is_refused_until_the_entry_point_switches_the_shims_on():
    # A fresh interpreter: in this one the shims are already on. Library modules never switch them on
    # themselves; parallel.initialize, the first step of every Megatron build, names the missing call.
    script = textwrap.dedent(
        """
        import torch.distributed as dist
        from megatron_zppo.train import parallel
        try:
            parallel.initialize(parallel.ParallelConfig())
        except RuntimeError as e:
            print(e)
        assert not dist.is_initialized()
        """
    )
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parallel.initialize: the process's entry point must call megatron_zppo.train.cpu_compat.enable()" in (
        result.stdout)
