"""tools/gpu_check.sh + benchmarks/gpu_check*.py on CPU: the --cpu-smoke run goes through the same code as
the GPU check (our build_policy, the trainer's log-probs in fp32 and bf16 against a float64 reference, PPO
steps, the bucketed export into an HFEngine, chunked log-probs, Qwen3.5 hybrid and VL) on tiny models,
says what this machine cannot run, and the FLOP and MFU arithmetic is checked."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)
import gpu_check_report as gr  # noqa: E402 - benchmarks/ is on sys.path from here on
NUMBER = r"([0-9.e+-]+)"


def check_smoke_report(report: str) -> None:
    """What every --cpu-smoke report must show (also used by the rehearsal test)."""
    assert "FAILED" not in report, report

    def diff(pattern: str) -> float:
        return float(re.search(pattern + r" \| max abs diff " + NUMBER, report).group(1))

    # fp32: HF's model to float32 rounding.
    assert diff(r"\| log-prob parity \| fp32 trainer vs float64 CPU") < 1e-5
    assert diff(r"Qwen3.5 hybrid log-prob parity \| fp32 trainer \(torch delta rule\) vs float64 CPU") < 1e-5
    assert diff(r"Qwen3.5-VL log-prob parity \| fp32 trainer vs float64 CPU, 2 rows with images") < 1e-5
    # bf16 needs a GPU (precision.py refuses it here), so the trainer runs in fp32 and the rows say why.
    for check in (r"log-prob parity \| bf16 trainer vs float64 CPU", r"Qwen3.5 hybrid log-prob parity \| bf16 trainer",
                  r"Qwen3.5-VL log-prob parity \| bf16 trainer"):
        assert re.search(check + r".* \| not available on this machine \(precision.dtype='bf16' needs a CUDA GPU",
                         report), check
    # The local attention takes torch's softmax where Apex's kernels are absent (here, and the lent GPU).
    assert "| attention softmax | local spec, bf16 inputs | torch (masked_softmax_fusion=False) |" in report
    for tokens in (32, 64):
        assert re.search(rf"fp32 PPO step, 1 x {tokens} tokens \| [\d,]+ tokens/s .*MFU [\d.]+% of the measured fp32 "
                         r"rate \|", report)
    assert re.search(r"fp32 PPO step, 1 x 128 tokens, selective recompute \| [\d,]+ tokens/s", report)
    assert re.search(r"\| peak \| fp32 matmul 512\^3, measured here \| [\d.,e+-]+ TFLOP/s", report)
    assert re.search(r"weight sync \| .* \| [\d.]+ s for [\d.]+ GB", report)
    chunked = re.search(r"chunked log-probs \| .* vocab 2,048.* log-probs max abs diff " + NUMBER +
                        r", d hidden max abs diff " + NUMBER, report)
    assert float(chunked.group(1)) < 1e-6 and float(chunked.group(2)) < 1e-6  # chunking changes no number
    assert re.search(r"Qwen3.5 hybrid throughput \| fp32 PPO step, 1 x 96 tokens.* \| [\d,]+ tokens/s", report)
    assert re.search(r"Qwen3.5-VL throughput \| fp32 PPO step, 2 rows, \d+ tokens \+ \d+ image patches \| [\d,]+ "
                     r"tokens/s", report)
    assert diff(r"\| packing \| THD packed row vs padded rows, fp32 log-probs") < 1e-4
    assert re.search(r"\| packing \| packed vs padded real tokens/s \| [\d.]+x \|", report)
    # Never silently dropped: what this machine lacks is a row of the report.
    for check in ("Transformer Engine layer spec", "THD \\(packed\\) attention through TE", "throughput \\| FP8",
                  "SGLang rollout engine"):
        assert re.search(rf"\| {check}.*\| not available on this machine \(", report), check
    assert re.search(r"\| total \| wall clock of the check \| \d+ s \|", report)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cpu_smoke_runs_every_check_and_writes_the_report(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PY": sys.executable}
    res = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), "--cpu-smoke", "--steps", "1", "--warmup", "1"],
                         env=env, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    check_smoke_report((tmp_path / "gpu_check.md").read_text())


def test_a_failing_section_becomes_a_failed_row_and_the_report_is_written_at_once(tmp_path):
    report = gr.Report(tmp_path / "r.md", ["| check | setting | result |"])
    def fails_half_way():
        yield "| kept | before the failure | 0 |"
        raise MemoryError("CUDA out of memory")

    report.section("good", lambda: ["| a | b | 1 |"])
    report.section("bad", fails_half_way)
    report.section("after", lambda: ["| c | d | 2 |"])
    text = (tmp_path / "r.md").read_text()
    assert "| a | b | 1 |" in text and "| c | d | 2 |" in text
    assert "| kept | before the failure | 0 |\n| bad | - | FAILED: MemoryError: CUDA out of memory |" in text
    assert report.failed == ["bad"]


def test_mfu_is_given_against_the_measured_rate_and_the_datasheet():
    peaks = {"measured": ("bf16", 800.0), "datasheet": {"bf16": 1000.0, "fp8": 2000.0}}
    assert gr.mfu_text(400e12, "bf16", peaks) == ", MFU 50.0% of the measured bf16 rate, 40.0% of the datasheet bf16 peak"
    # FP8 against the FP8 datasheet figure only: the measured rate is a bf16 one.
    assert gr.mfu_text(400e12, "fp8", peaks) == ", MFU 20.0% of the datasheet fp8 peak"
    assert gr.mfu_text(400e12, "bf16", {"measured": None, "datasheet": None}) == ""


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
    assert gr.peak_tflops(500.0) == {"bf16": 500.0, "fp8": 1000.0}
    assert gr.PEAK_TFLOPS["H100"] == {"bf16": 989.0, "fp8": 1979.0}


def test_without_a_gpu_the_full_check_refuses_and_points_to_the_smoke_run():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "--cpu-smoke" in res.stderr


def test_an_unknown_section_is_refused_with_the_known_ones():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--cpu-smoke", "--sections",
                          "qwen3,packng"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown ['packng']" in res.stderr and "'packing'" in res.stderr
