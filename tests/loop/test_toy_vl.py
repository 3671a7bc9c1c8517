"""tools/make_toy_vl.py: the counting pictures say what their answers say, and the Megatron VL
trainer really learns from images (a teacher fine-tuned on pictures counts held-out ones)."""

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_toy_vl", REPO / "tools" / "make_toy_vl.py")
toy_vl = importlib.util.module_from_spec(_spec)
sys.modules["make_toy_vl"] = toy_vl  # its dataclasses look their module up there
_spec.loader.exec_module(toy_vl)


def _squares(img) -> int:
    """Quadrants holding any non-background pixel."""
    pixels = np.asarray(img)
    return sum(int((pixels[y : y + 32, x : x + 32] < 200).any()) for y in (0, 32) for x in (0, 32))


def test_each_picture_holds_as_many_squares_as_its_answer(tmp_path):
    rng = random.Random(0)
    for count in [1, 2, 3, 4] * 5:
        assert _squares(toy_vl.picture(rng, count)) == count
    rows = toy_vl.write_pictures(tmp_path, "train", 12, seed=3)
    assert [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()] == rows
    for row in rows:
        assert _squares(Image.open(row["images"][0]).convert("RGB")) == int(row["answer"])
    assert {r["answer"] for r in rows} <= {"1", "2", "3", "4"} and len({r["answer"] for r in rows}) > 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_vl_trainer_learns_to_count_squares_from_pictures(tmp_path, own_megatron_world):
    recipe = toy_vl.Recipe(train_questions=8, eval_questions=64, student_steps=1)
    built = toy_vl.build(tmp_path / "vl", recipe)
    models = built["models"]
    # Chance is 1/4 (1-4 squares); the answer is only in the picture, never in the question.
    assert models["teacher"]["greedy_accuracy"] >= 0.8 and models["student"]["greedy_accuracy"] <= 0.5
    assert toy_vl.build(tmp_path / "vl", recipe) == built  # cached: nothing rebuilt
