"""The main job on video questions, end to end on CPU: the toy video task (tools/make_toy_video.py)
from a JSONL file, a tiny random Qwen3.5-VL student and teacher, rollouts with the videos on the
in-process engine, grading, ZPPO with BCQ/NCQ prompts that keep their video, the Megatron
``Qwen3VLModel`` trained on the same frames, weight sync, and tools/evaluate.py on a video suite."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_zppo.metrics import read_metrics
from tests.loop.test_pretrain_e2e import _check_contract, _run

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_toy_video", ROOT / "tools" / "make_toy_video.py")
toy_video = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy_video)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_zppo_run_on_video_questions_trains_and_evaluates(toy_world, tmp_path):
    from megatron_zppo.toy.models import new_qwen35_vl

    root = toy_world["root"]
    for name, seed in (("vl_video_student", 1), ("vl_video_teacher", 2)):
        if not (root / name).exists():
            new_qwen35_vl(root / name, toy_world["tokenizer"], seed=seed)
    student, teacher = str(root / "vl_video_student"), str(root / "vl_video_teacher")
    toy_video.write_videos(tmp_path / "data", "train", 6, seed=0)
    data = tmp_path / "data" / "train.jsonl"
    source = "{kind: jsonl, path: %s}" % data
    run = tmp_path / "run"
    _run(["--config", "examples/cpu_toy/zppo.yaml", f"run.dir={run}", "run.steps=1", "run.save_every=1",
          "run.updates_per_step=1", f"student.hf_path={student}", f"teacher.hf_path={teacher}", "rollout.n_new=4",
          "rollout.group_size=4", "rollout.teacher_group_size=2", "rollout.max_new_tokens=6",
          "rollout.max_prompt_tokens=200", "rollout.max_reformulated_prompt_tokens=600", "method.rho_aug=0.5", "method.tau=1.0",
          "buffer.rho_replay=0.0", "train.micro_batch_size=8", "method.zppo.compression=false",
          "reward.grader=tests.loop.slow_graders:parity", "reward.workers=1", "eval.temperature=0",
          "eval.max_new_tokens=6", "eval.presence_penalty=0", f"data.train=[{source}]",
          f"data.eval={{videos: [{source}]}}", "data.held_out=[]"])
    (m,) = read_metrics(run / "metrics.jsonl")
    # The trainer's log-probs of the sampled tokens equal the engine's only if both expanded each
    # video placeholder to the same timestamped frames and fed the same pixels.
    _check_contract([m])
    assert m["logprob_diff_mean"] < 1e-5 and m["grad_norm"] > 0
    assert m["n_ncq"] + m["n_bcq"] > 0  # reformulated prompts, with their video
    assert json.loads((run / "summary.json").read_text())["eval"]["videos"]["n"] == 6

    suite = tmp_path / "suite.yaml"
    suite.write_text("decoding: {temperature: 0.0, top_p: 1.0, top_k: -1, presence_penalty: 0.0, max_new_tokens: 6}\n"
                     "templates: examples/cpu_toy/templates\nbenchmarks:\n  squares_in_video: {family: video, "
                     f"grader: 'tests.loop.slow_graders:parity', sources: [{source}]}}\n")
    proc = subprocess.run([sys.executable, "tools/evaluate.py", "--model", student, "--megatron",
                           str(run / "checkpoints" / "step_000001"), "--suite", str(suite), "--out", str(tmp_path / "ev")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["benchmarks"]["squares_in_video"]["n"] == 6 and "video" in res["families"]
