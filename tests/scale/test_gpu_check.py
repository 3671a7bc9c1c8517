"""tools/gpu_check.sh + benchmarks/gpu_check.py on CPU: the --cpu-smoke run goes through the same code as
the GPU check (our build_policy, the trainer's log-probs against a float64 reference, PPO steps, the
bucketed export into an HFEngine) on a tiny model, and the FLOP arithmetic behind MFU is checked."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)


@pytest.mark.timeout(120)
def test_cpu_smoke_runs_every_check_and_writes_the_report(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PY": sys.executable}
    res = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), "--cpu-smoke", "--steps", "1", "--warmup", "1"],
                         env=env, capture_output=True, text=True, timeout=110)
    assert res.returncode == 0, res.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    diff = float(re.search(r"fp32 trainer vs float64 CPU \| max abs diff ([0-9.e+-]+)", report).group(1))
    assert diff < 1e-5  # the trainer's fp32 log-probs are the HF model's, to float32 rounding
    assert re.search(r"fp32 PPO step, 1 x 32 tokens \| [\d,]+ tokens/s", report)
    assert re.search(r"fp32 PPO step, 1 x 64 tokens \| [\d,]+ tokens/s", report)
    assert re.search(r"weight sync \| .* \| [\d.]+ s for [\d.]+ GB", report)
    assert "FP8 | skipped" in report
    vl = float(re.search(r"Qwen3.5-VL log-prob parity \| fp32 trainer vs float64 CPU, 2 rows with images \| "
                         r"max abs diff ([0-9.e+-]+)", report).group(1))
    assert vl < 1e-5  # the VL policy with images is HF's model
    assert re.search(r"Qwen3.5-VL throughput \| fp32 PPO step, 2 rows, \d+ tokens \+ \d+ image patches \| [\d,]+ "
                     r"tokens/s", report)


def test_matmul_parameter_count_matches_the_hf_models_linear_layers():
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(Qwen3Config(**gc.TINY))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert gc.matmul_params(gc.TINY) == linear
    assert 0.55e9 < gc.matmul_params(gc.QWEN3_06B) < 0.65e9  # "0.6B" once the embedding lookup is excluded


def test_flops_per_token_adds_attention_that_grows_with_length():
    shape = gc.QWEN3_06B
    base = 6 * gc.matmul_params(shape)
    assert gc.flops_per_token(shape, 1024) == base + 12 * 28 * 2048 * 1024
    assert gc.flops_per_token(shape, 4096) - gc.flops_per_token(shape, 2048) == 12 * 28 * 2048 * 2048


def test_peak_override_and_known_cards():
    assert gc.peak_tflops(500.0) == {"bf16": 500.0, "fp8": 1000.0}
    assert gc.PEAK_TFLOPS["H100"] == {"bf16": 989.0, "fp8": 1979.0}


def test_without_a_gpu_the_full_check_refuses_and_points_to_the_smoke_run():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "--cpu-smoke" in res.stderr
