"""The machine-facing parts of the GPU check (benchmarks/gpu_check.py): the report written row by row,
what this machine cannot run, the measured and datasheet peaks, and MFU against both."""

from __future__ import annotations

import gc
import time
import traceback
from pathlib import Path

import torch

PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp8": 1979.0}, "H200": {"bf16": 989.0, "fp8": 1979.0}}
NOT_AVAILABLE = "not available on this machine"


def device_here() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Report:
    """The Markdown report, rewritten after every section so that a run cut short keeps its rows."""

    def __init__(self, path: Path, header: list[str]):
        self.path, self.lines, self.failed = path, list(header), []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def add(self, rows: list[str]) -> None:
        self.lines += rows
        self._write()
        print("\n".join(rows), flush=True)

    def section(self, name: str, fn) -> None:
        """Run ``fn`` (a list of rows, or a generator of rows: each one is kept as soon as it is yielded,
        so the rows before a failure stay); a failure becomes a FAILED row and later sections still run."""
        t0 = time.perf_counter()
        try:
            for row in fn():
                self.add([row])
        except Exception as e:  # noqa: BLE001 - reported, not hidden: the row says what failed
            traceback.print_exc()
            self.failed.append(name)
            self.add([f"| {name} | - | FAILED: {type(e).__name__}: {str(e)[:300]} |"])
            gc.collect()  # an out-of-memory failure must not take the next section's memory too
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(f"[gpu_check] {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    def _write(self) -> None:
        self.path.write_text("\n".join(self.lines) + "\n")


def train_kind() -> tuple[str, str | None]:
    """("bf16", None) where our precision check lets the trainer run in bf16 (a GPU), else ("fp32", why).

    The check refuses bf16 without a GPU; the CPU smoke run then trains in fp32 and says so in a row.
    """
    from megatron_zppo.train.precision import PrecisionConfig, PrecisionError, check_precision, detect

    te, cap, cuda = detect()
    try:
        check_precision(PrecisionConfig("bf16"), te, cap, cuda_version=cuda, layer_spec="local")
        return "bf16", None
    except PrecisionError as err:
        return "fp32", str(err)


def measure_matmul_tflops(n: int, dtype: str = "bf16", warmup: int = 3, reps: int = 10) -> float:
    """Mean TFLOP/s of an n x n x n product on random data (KINDS.md's recipe for the H200)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    a, b = (torch.randn(n, n, generator=g).to(device_here(), torch_dtype) for _ in range(2))
    for _ in range(warmup):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def peak_tflops(override: float | None) -> dict[str, float] | None:
    """The datasheet's dense peaks of this card (or ``--peak-tflops``), None if unknown."""
    if override:
        return {"bf16": override, "fp8": 2 * override}
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def fp8_available() -> tuple[bool, str]:
    from megatron_zppo.train.precision import PrecisionConfig, PrecisionError, check_precision, detect

    te, cap, cuda = detect()
    try:
        check_precision(PrecisionConfig("bf16", "tensorwise"), te, cap, cuda_version=cuda)
        return True, f"TE {te}"
    except PrecisionError as err:
        return False, str(err)


def unavailable_rows(smoke: bool) -> list[str]:
    """What this machine cannot run, said in the report rather than left out of it."""
    import importlib.util

    rows = []
    te = importlib.util.find_spec("transformer_engine") is not None
    if not te:
        why = f"{NOT_AVAILABLE} (no transformer_engine; its 729 MB wheel cannot travel to the lent GPU machine)"
        rows.append(f"| Transformer Engine layer spec | TE linear/norm/attention layers | {why} |")
        rows.append(f"| THD (packed) attention through TE | TE fused attention on cu_seqlens | {why} |")
    fp8, why = (False, "CPU smoke run") if smoke else fp8_available()
    if not fp8:  # else qwen3_rows measures it
        rows.append(f"| throughput | FP8 (TE tensorwise recipe) | {NOT_AVAILABLE} ({why}) |")
    if importlib.util.find_spec("sglang") is None:
        rows.append(f"| SGLang rollout engine | generation + weight sync into a server | {NOT_AVAILABLE} (no sglang; "
                    "its ~11 GB environment cannot travel; tests_live/ runs it on CPU) |")
    return rows


def mfu_text(model_flops_per_s: float, kind: str, peaks: dict) -> str:
    """', MFU a% of the measured bf16 rate, b% of the datasheet' (whichever peaks are known).

    ``peaks``: {"measured": (dtype, TFLOP/s) or None, "datasheet": {dtype: TFLOP/s} or None}.
    """
    parts = []
    measured = peaks.get("measured")
    if measured and measured[0] == kind:
        parts.append(f"{100 * model_flops_per_s / (measured[1] * 1e12):.1f}% of the measured {kind} rate")
    if (peaks.get("datasheet") or {}).get(kind):
        parts.append(f"{100 * model_flops_per_s / (peaks['datasheet'][kind] * 1e12):.1f}% of the datasheet {kind} peak")
    return f", MFU {', '.join(parts)}" if parts else ""


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ("megatron-core", "megatron-bridge", "transformers", "transformer-engine")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"no {name}")
    return ", ".join(found)
