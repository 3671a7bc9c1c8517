"""A tiny Qwen3.5 vision-language student and teacher (HF side, random weights): images reach the
in-process engine through its image processor, and one ZPPO rollout step runs on image questions."""

import io
import threading

import pytest
from PIL import Image

from megatron_zppo import build
from megatron_zppo.config import load_config
from megatron_zppo.core.records import PromptKind, Question
from megatron_zppo.rollout.engine import GenerateRequest, SamplingParams
from megatron_zppo.rollout.hf_engine import HFEngine

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=4)


def _png(colour, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def vl(toy_world):
    from megatron_zppo.toy.models import new_qwen35_vl

    root = toy_world["root"]
    for name, seed in (("vl_student", 1), ("vl_teacher", 2)):
        if not (root / name).exists():
            new_qwen35_vl(root / name, toy_world["tokenizer"], seed=seed)
    return {"student": str(root / "vl_student"), "teacher": str(root / "vl_teacher")}


def test_images_are_seen_by_the_model_and_requests_keep_their_order(vl):
    engine, encode = HFEngine(vl["student"]), build.make_encoder(vl["student"])
    text_only = GenerateRequest(encode("What is 2+3?"), 1, (), "t")
    red, blue = (GenerateRequest(encode("What colour?", 1), 2, (_png(c),), f"img-{c}") for c in ("red", "blue"))
    out = engine.generate([red, text_only, blue], GREEDY)
    assert [len(g) for g in out] == [2, 1, 2]
    assert out[0][0].response_ids == out[0][1].response_ids  # greedy: both samples of one prompt agree
    assert out[0][0].logprobs[0] != out[2][0].logprobs[0]  # a different image changes the distribution
    assert out[1] == engine.generate([text_only], GREEDY)[0]  # text requests are unaffected by the others


def test_a_prompt_without_its_image_placeholder_is_refused(vl):
    engine, encode = HFEngine(vl["student"]), build.make_encoder(vl["student"])
    with pytest.raises(ValueError, match="request 'q1': the prompt holds 0 image placeholder.*for 1 image"):
        engine.generate([GenerateRequest(encode("What colour?"), 1, (_png("red"),), "q1")], GREEDY)
    text_model = HFEngine.__new__(HFEngine)
    text_model.image_processor, text_model.name, text_model._lock = None, "student", threading.Lock()
    with pytest.raises(ValueError, match="serves a text-only model"):
        text_model.generate([GenerateRequest([1], 1, (_png("red"),), "q2")], GREEDY)


def test_a_zppo_rollout_step_on_image_questions(vl, tmp_path):
    cfg = load_config("examples/cpu_toy/zppo.yaml", [
        f"student.hf_path={vl['student']}", f"teacher.hf_path={vl['teacher']}", "rollout.n_new=4",
        "rollout.group_size=4", "rollout.teacher_group_size=2", "rollout.max_new_tokens=6",
        "reward.grader=tests.loop.slow_graders:never", "method.zppo.compression=false", "method.rho_aug=1.0"])
    questions = [Question(f"img{i}", f"How many dots? ({i})", str(i), images=(_png((40 * i, 0, 0)),))
                 for i in range(4)]
    student = HFEngine(vl["student"], seed=0)
    sent = []
    generate = student.generate
    student.generate = lambda reqs, params: sent.extend(reqs) or generate(reqs, params)
    ctx = build.make_rollout_phase(cfg, student, questions)
    try:
        r = ctx(0)
    finally:
        ctx.graders.close()
    assert len(r.plain) == 4 and all(s.reward == 0.0 for g in r.groups for s in g.samples)
    # Every question is hard and the teacher never right: NCQ prompts only, one per question.
    assert r.n_hard == 4 and [g.kind for g in r.reformulated] == [PromptKind.NCQ] * 4
    by_id = {q.id: q.images for q in questions}
    assert len(sent) == 8 and all(req.images == by_id[req.request_id.split(":")[1]] for req in sent)  # its image kept
    ctx.buffer.update(r.plain)
    assert all(q.images == by_id[q.id] for q in ctx.buffer.sample(len(ctx.buffer)))


def test_length_limits_count_each_image_as_its_vision_tokens(vl):
    from megatron_zppo.rollout.collect import PromptSpec, generate_groups

    encode, engine = build.make_encoder(vl["student"]), HFEngine(vl["student"])
    image = _png("green", (128, 128))  # 8 x 8 patches of 16 px, merged 2 x 2: 16 vision tokens
    assert encode.image_tokens([image]) == 16 and encode.image_tokens([image, image]) == 32
    q = Question("big", "What colour?", "green", images=(image,))
    spec = PromptSpec(q, PromptKind.PLAIN, "0:big", "What colour?")
    ids = encode("What colour?", 1)
    kept, too_long = generate_groups(engine, encode, [spec], 1, GREEDY, len(ids) - 1 + 16)
    assert len(kept) == 1 and not too_long  # exactly at the limit once expanded
    kept, too_long = generate_groups(engine, encode, [spec], 1, GREEDY, len(ids) + 5)  # fits only unexpanded
    assert not kept and too_long == [spec]


def test_scoring_with_images_gives_the_engines_own_sampling_logprobs(vl):
    engine, encode = HFEngine(vl["student"]), build.make_encoder(vl["student"])
    image = _png("purple", (96, 64))
    prompt = encode("What colour?", 1)
    (gen,) = engine.generate([GenerateRequest(prompt, 1, (image,), "q")], GREEDY)[0:1][0]
    scored = engine.score([prompt], [gen.response_ids], [(image,)])[0]
    assert scored == pytest.approx(gen.logprobs, abs=1e-5)
    other = engine.score([prompt], [gen.response_ids], [(_png("yellow", (96, 64)),)])[0]
    assert max(abs(a - b) for a, b in zip(other, scored)) > 1e-4  # the image is really used
    with pytest.raises(ValueError, match="0 image placeholder"):
        engine.score([encode("What colour?")], [gen.response_ids], [(image,)])


def test_vision_token_counts_from_the_size_alone_equal_the_processors(vl):
    from transformers import AutoImageProcessor

    from megatron_zppo.images import vision_inputs, vision_token_counts

    processor = AutoImageProcessor.from_pretrained(vl["student"])
    # Below the minimum, odd sizes, a long strip, above the maximum (resized down).
    images = [_png("red", size) for size in [(10, 10), (64, 48), (97, 33), (300, 20), (400, 400)]]
    counts = vision_token_counts(processor, images)
    assert counts == vision_inputs(processor, images)[1] and len(set(counts)) > 2
