"""Images in the data path: tools/prepare_vl_data.py's filters and report, bad images named (or
skipped when the source says so), and images surviving the buffer, BCQ/NCQ and a checkpoint."""

import base64
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from megatron_zppo.data import DataError, SourceConfig, load_questions
from megatron_zppo.core.records import PromptKind, Question
from megatron_zppo.core.reformulate import ZppoConfig, plan_reformulations
from megatron_zppo.core.replay_buffer import ReplayBuffer
from megatron_zppo.rollout.collect import PromptSpec, generate_groups
from megatron_zppo.rollout.engine import Generation
from tests.core.factories import group, teacher

REPO = Path(__file__).resolve().parents[2]


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (w % 256, h % 256, 7)).save(buf, format="PNG")
    return buf.getvalue()


def _write(tmp_path, name, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_prepare_vl_data_applies_the_papers_filters_and_reports_why(tmp_path):
    src = tmp_path / "src.jsonl"
    uri = "data:image/png;base64," + base64.b64encode(_png(100, 100)).decode()
    rows = [
        {"id": "ok", "question": "What colour?", "answer": "red", "images": [_write(tmp_path, "a.png", _png(120, 300))]},
        {"id": "uri", "question": "How many?", "answer": "3", "images": uri},  # exactly 100 px: kept
        {"id": "small", "question": "q", "answer": "a", "images": [_write(tmp_path, "s.png", _png(99, 400))]},
        {"id": "corrupt", "question": "q", "answer": "a", "images": [_write(tmp_path, "c.png", _png(200, 200)[:60])]},
        {"id": "missing", "question": "q", "answer": "a", "images": [str(tmp_path / "nope.png")]},
        {"id": "long", "question": "q", "answer": "x" * 513, "images": [str(tmp_path / "a.png")]},
        {"id": "text", "question": "q", "answer": "a"},
        {"id": "broken"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "tools/prepare_vl_data.py", "--source", str(src), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 2
    assert report["dropped"] == {"image too small": 1, "image unreadable": 2, "answer longer than 512 characters": 1,
                                 "no image": 1, "malformed record": 1}
    kept = load_questions([SourceConfig(kind="jsonl", path=str(out / "questions.jsonl"))], log=lambda *_: None)
    assert [q.id for q in kept] == ["ok", "uri"]
    assert Image.open(kept[0].images[0]).size == (120, 300)  # written as files, referenced by path


def test_prepare_vl_data_reads_an_hf_dataset_with_an_image_feature(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["a?", "b?"], "answer": ["1", "2"],
                                     "image": [Image.open(io.BytesIO(_png(150, 150))), Image.open(io.BytesIO(_png(20, 20)))]},
                                    features=datasets.Features({"question": datasets.Value("string"),
                                                                "answer": datasets.Value("string"),
                                                                "image": datasets.Image()}))
    ds.save_to_disk(tmp_path / "ds")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "tools/prepare_vl_data.py", "--source", str(tmp_path / "ds"), "--out",
                           str(out), "--images-field", "image"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 1 and report["dropped"] == {"image too small": 1}


def test_a_bad_image_stops_loading_naming_the_record_unless_bad_records_are_skipped(tmp_path):
    src = tmp_path / "qs.jsonl"
    good = _write(tmp_path, "g.png", _png(64, 64))
    src.write_text(json.dumps({"id": "g", "question": "q", "answer": "1", "images": [good]}) + "\n"
                   + json.dumps({"id": "b", "question": "q", "answer": "1", "images": [str(tmp_path / "gone.png")]}))
    with pytest.raises(DataError, match=r"(?s)1 bad record.*qs.jsonl line 2: image .*gone.png cannot be read"):
        load_questions([SourceConfig(kind="jsonl", path=str(src))])
    logged = []
    qs = load_questions([SourceConfig(kind="jsonl", path=str(src), skip_bad_records=True)], log=logged.append)
    assert [q.id for q in qs] == ["g"] and "line 2" in logged[0]


def test_images_survive_the_buffer_reformulation_rollout_requests_and_a_checkpoint(tmp_path):
    q = Question("v1", "What is in the picture?", "5", images=(_png(32, 32), "/data/img/v1.png"))
    plain = group(q, [0.0, 0.0, 0.0, 0.0])
    buf = ReplayBuffer(capacity=10, tau=0.5, seed=0)
    buf.update([plain])
    torch.save(buf.state_dict(), tmp_path / "buf.pt")
    restored = ReplayBuffer(capacity=10, tau=0.5, seed=0)
    restored.load_state_dict(torch.load(tmp_path / "buf.pt", weights_only=False))
    (back,) = restored.sample(1)
    assert back.images == q.images

    plans = plan_reformulations([plain], {q.id: teacher(q, [1.0])}, cap=2, cfg=ZppoConfig(), rng=random.Random(0))
    assert {p.kind for p in plans} == {PromptKind.BCQ, PromptKind.NCQ}
    assert all(p.question.images == q.images for p in plans)  # candidates are text; the images stay

    class Recorder:
        weight_version = "v"

        def __init__(self):
            self.requests = []

        def generate(self, reqs, params):
            self.requests += reqs
            return [[Generation([1], [-0.1], "x", "stop", "v")] * r.n for r in reqs]

    engine = Recorder()
    specs = [PromptSpec(p.question, p.kind, p.group_id, "prompt") for p in plans]
    generate_groups(engine, lambda t, n_images: [1, 2] + [9] * n_images, specs, 2, None, 100)
    assert [r.images for r in engine.requests] == [q.images, q.images]
