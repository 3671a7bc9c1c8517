"""checkpoints_conversion/: HF -> Megatron -> HF is bit-exact across layouts, and --verify means it.

The round trip converts the tiny Qwen3 under TP=2 (torchrun, gloo) and back under TP=1, with
--verify on both legs; the tools run as real subprocesses, as a user would run them.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "checkpoints_conversion"


def _run(nproc: int, tool: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, *launcher, str(TOOLS / tool), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _safetensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_hf_to_megatron_to_hf_round_trip_is_bit_exact_and_verified(tiny_qwen3_dir, tmp_path):
    source = Path(tiny_qwen3_dir)
    original, converted = _round_trip(source, tmp_path)
    assert len(original) == 25 and converted.keys() == original.keys()
    for name, tensor in original.items():
        assert converted[name].dtype == tensor.dtype and torch.equal(converted[name], tensor), name
    for name in ("config.json", "generation_config.json"):  # non-weight files come from --hf-config
        assert (tmp_path / "hf_out" / name).read_bytes() == (source / name).read_bytes()


def _round_trip(source: Path, tmp_path: Path, picture: bool = False) -> tuple[dict, dict]:
    """HF -> Megatron at TP=2 -> HF at TP=1, both legs with --verify; the original and final weights."""
    megatron_dir, hf_out = tmp_path / "megatron", tmp_path / "hf_out"
    to_megatron = _run(2, "hf_to_megatron.py", "--hf", str(source), "--out", str(megatron_dir), "--tp", "2",
                       "--verify")  # fmt: skip
    assert to_megatron.returncode == 0, to_megatron.stderr[-4000:]
    assert "verify OK" in to_megatron.stdout and "max |logit diff| = " in to_megatron.stdout
    assert ("and a picture" in to_megatron.stdout) == picture
    assert (megatron_dir / "metadata.json").is_file()

    to_hf = _run(1, "megatron_to_hf.py", "--megatron", str(megatron_dir), "--hf-config", str(source),
                 "--out", str(hf_out), "--verify")  # fmt: skip
    assert to_hf.returncode == 0, to_hf.stderr[-4000:]
    assert "verify OK" in to_hf.stdout
    return _safetensors(source), _safetensors(hf_out)


@pytest.mark.slow
def test_a_vision_language_round_trip_is_bit_exact_and_verified_with_a_picture(tmp_path):
    from tests.train.qwen35_vl_worker import save_tiny_qwen35_vl

    source = Path(save_tiny_qwen35_vl(tmp_path / "vl"))
    original, converted = _round_trip(source, tmp_path, picture=True)
    assert converted.keys() == original.keys() and any(name.startswith("model.visual.") for name in original)
    for name, tensor in original.items():
        assert converted[name].dtype == tensor.dtype and torch.equal(converted[name], tensor), name


def test_verify_of_a_vision_language_checkpoint_checks_the_vision_tower(megatron_world, tmp_path):
    from megatron_zppo.train.model import ModelConfig, build_policy
    from megatron_zppo.train.parallel import ParallelConfig
    from tests.train.qwen35_vl_worker import save_tiny_qwen35_vl

    vl_dir = save_tiny_qwen35_vl(tmp_path / "vl")
    logit_check = _logit_check()
    policy = build_policy(ModelConfig(hf_path=vl_dir), ParallelConfig())
    assert logit_check.max_logit_difference(policy, vl_dir) < 1e-4  # the tools' default tolerance
    with torch.no_grad():  # a change only the picture's tokens can see
        policy.chunks[0].vision_model.merger.linear_fc2.bias.add_(0.1)
    assert logit_check.max_logit_difference(policy, vl_dir) > 1e-2


def _logit_check():
    spec = importlib.util.spec_from_file_location("logit_check", TOOLS / "logit_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verify_passes_on_the_same_model_and_fails_on_another(tiny_qwen3_dir, megatron_world, tmp_path, capsys):
    from megatron_zppo.train.model import ModelConfig, build_policy
    from megatron_zppo.train.parallel import ParallelConfig
    from tests.train.tiny_qwen3 import save_tiny_qwen3

    logit_check = _logit_check()
    policy = build_policy(ModelConfig(hf_path=tiny_qwen3_dir), ParallelConfig())
    assert logit_check.max_logit_difference(policy, tiny_qwen3_dir) < 1e-5
    other = save_tiny_qwen3(tmp_path / "other", seed=1)  # same shapes, different weights
    assert logit_check.verify(policy, other, tolerance=1e-4, what="tiny vs other") == 1
    out = capsys.readouterr().out
    assert "verify FAILED: tiny vs other: max |logit diff| = " in out and "(tolerance 1.0e-04)" in out


@pytest.mark.parametrize(
    "tool, make_args, message",
    [
        ("hf_to_megatron.py", lambda d, m: ["--hf", str(m), "--out", str(d / "x")],
         "not a Hugging Face model directory"),
        ("hf_to_megatron.py", lambda d, m: ["--hf", str(d), "--out", str(d)], "is not an empty directory"),
        ("megatron_to_hf.py", lambda d, m: ["--megatron", str(d), "--hf-config", str(d), "--out", str(m)],
         "not a Megatron distributed checkpoint"),
    ],
    ids=["missing_hf_dir", "non_empty_out", "hf_dir_as_megatron"],
)  # fmt: skip
def test_bad_paths_fail_fast_with_a_clear_message(tool, make_args, message, tiny_qwen3_dir, tmp_path):
    result = _run(1, tool, *make_args(Path(tiny_qwen3_dir), tmp_path / "missing"))
    assert result.returncode == 2  # argparse's usage error, before any distributed start-up
    assert message in result.stderr
