"""A tiny copy of every benchmark release of the paper's suite (examples/paper/eval/*.yaml), each in
its published layout, under one data root: 2-3 items per converter, written with the row builders
and writers of the converter tests, with real PNGs and one real MP4 (shared by every video) so that
the loader, which decodes every image and video once, reads them all."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.evaluation import test_converters_text as text
from tests.evaluation import test_converters_video as video
from tests.evaluation import test_converters_vlm as vlm
from tests.evaluation import test_converters_vlm_docs as docs


def tiny_mp4() -> bytes:
    """The video tests' MP4 (three 32x32 frames), built by their fixture's own function."""
    fixture = video.mp4
    build = getattr(fixture, "__wrapped__", None) or getattr(fixture, "__pytest_wrapped__").obj
    return build()


def _vlm(root: Path) -> dict[str, int]:
    w, img = vlm.write, vlm.img
    w(root / "ai2d/data/test-00000-of-00001.parquet",
      [vlm.ai2d_row(), vlm.ai2d_row("What eats the grass?", ("cow", "owl"), "1", "green")])
    w(root / "EmbSpatial-Bench/data/test-00000-of-00001.parquet", [vlm.embspatial_row(), vlm.embspatial_row(8, 0, "above")])
    w(root / "VisualPuzzles/data.parquet", [vlm.visualpuzzles_row("vp-1", ["one", "two", "three", "four"], "B"),
                                            vlm.visualpuzzles_row("vp-2", None, "D", "Inductive")])
    w(root / "We-Math/data/testmini-00000-of-00001.parquet",
      [vlm.wemath_row("2steps_7", "2steps_1"), vlm.wemath_row("2steps_7", "2steps_multi", "A. 3; 4;B. 5", "A")])
    pro = root / "MMMU_Pro"
    w(pro / "standard (4 options)/test-00000-of-00001.parquet", [
        vlm.mmmu_standard_row("test_Physics_1", "<image 2> shows a circuit and <image 1> its graph. Which law?",
                              ["Ohm", "Faraday", "<image 3>", "Lenz"], "C",
                              {1: img("red"), 2: img("green"), 3: img("blue")}),
        vlm.mmmu_standard_row("test_Physics_2", "<image 1> What is shown?", ["a", "b", "c", "d"], "A",
                              {1: img("red"), 2: img("gray")})])
    ten = [str(v) for v in range(10)]
    w(pro / "standard (10 options)/test-00000-of-00001.parquet", [
        vlm.mmmu_standard_row("validation_Math_3", "Pick nine. <image 1>", ten, "J", {1: img("blue")}),
        vlm.mmmu_standard_row("validation_Math_4", "Pick two. <image 1>", ten, "C", {1: img("green")})])
    w(pro / "vision/test-00000-of-00001.parquet", [vlm.mmmu_vision_row(), vlm.mmmu_vision_row("test_Art_2", "A")])
    mc = ("Which length is AB?\nChoices:\nA:5 cm\nB:5 m\nPlease directly answer the question and provide the correct "
          "option letter, e.g., A, B, C, D.")
    w(root / "MathVerse-lmmseval/testmini.parquet", [vlm.mathverse_row(1, "Text Dominant", mc, "A", "multi-choice"),
                                                     vlm.mathverse_row(2, "Text Lite", "Find L.", "14", "free-form"),
                                                     vlm.mathverse_row(3, "Vision Only", "", "B", "multi-choice")])
    w(root / "MathVision/data/test-00000-of-00001-3532b8d3f1b4047a.parquet", [
        vlm.mathvision_row("1", "<image1>\nHow many dots are there?", ["1", "2", "3", "4", "5"], "C"),
        vlm.mathvision_row("2", "What is the perimeter? <image1>", [], "14", "metric geometry - length")])
    w(root / "MathVista/data/testmini-00000-of-00001-725687bf7a18d64b.parquet", [
        vlm.mathvista_row("1", "The period of the red curve is ____ that of the blue curve.",
                          ["larger than", "equal to", "smaller than"], "equal to", "multi_choice", "text"),
        vlm.mathvista_row("2", "What is the length of AB?", None, "1.5", "free_form", "float", 1.0, "cm"),
        vlm.mathvista_row("4", "Which city is the largest?", None, "Paris", "free_form", "text")])
    w(root / "DynaMath_Sample/data/sample1-00000-of-00001.parquet", [
        vlm.dynamath_row("5", "Is Dark Magenta greater than Rosy Brown? Choices: (A) yes (B) no", "B",
                         "multiple choice"),
        vlm.dynamath_row("1", "What is the period of this function?", "2.0944", "float"),
        vlm.dynamath_row("21", "What time is shown?", "5:0", "free form")])
    w(root / "BabyVision/data/train-00000-of-00001.parquet",
      [vlm.babyvision_row(11, "choice", ["(1)", "(2)", "(3)"], 2), vlm.babyvision_row(12, "blank", blank="(4,7)")])
    w(root / "vlmsareblind/data/valid-00000-of-00001.parquet", [
        vlm.blind_row("Subway Connections", "How many single-colored paths go from A to C? Answer with a number in "
                      "curly brackets, e.g., {3}.", "2"),
        vlm.blind_row("Touching Circles", "Are the two circles touching each other? Answer with Yes/No.", "Yes")])

    dw = docs.write
    dw(root / "CharXiv/val.parquet", [
        docs.charxiv_row(0, [1, 18], ["Loss curves", "2 by 3"], "Which model declines most?", "Joint-CNN", 1,
                         row=1, col=2),
        docs.charxiv_row(2, [7], ["0.12"], "Which trend does the red curve follow?", "rises", 2),
        docs.charxiv_row(5, [16], ["Increases"], "How much higher is A than B?", "1.25", 4,
                         loc="the bottom subplot")], docs.CHARXIV)
    dw(root / "MMVet/data/test-00000-of-00001.parquet", [
        docs.mmvet_row("v1_0", "What is x in the equation?", "-1<AND>-5", "ocr,math"),
        docs.mmvet_row("v1_1", "Which city is this?", "Paris <OR> paris, France", "rec,know")], docs.MMVET)
    dw(root / "DocVQA/InfographicVQA/validation-00000-of-00001.parquet", [
        docs.infovqa_row("98765", "What percentage of people walk?", ["25%", "25"]),
        docs.infovqa_row("98766", "Which country ranks first?", ["Japan"])], docs.INFOVQA)
    kie = json.dumps({"name": "Bob", "total": ["12.50", "12.5"]})
    dw(root / "OCRBench_v2/data/test-00000-of-00001.parquet", [
        docs.ocrbench_row(0, "text recognition en", "What is written in the image?", ["STOP"], "case sensitive"),
        docs.ocrbench_row(1, "VQA with position en", "Where is the price? Answer in JSON.", ["$5"],
                          bbox=[1, 2, 30, 40]),
        docs.ocrbench_row(2, "key information extraction cn", "提取信息", [kie]),
        docs.ocrbench_row(3, "text spotting en", "Spot all text.", ["x"], bbox_list=[[0, 0, 10, 0, 10, 5, 0, 5]],
                          content=["OPEN"]),
        docs.ocrbench_row(4, "cognition VQA cn", "这是什么？", ["猫"], "multiple choice")], docs.OCRBENCH)
    return {"ai2d": 2, "embspatial": 2, "visualpuzzles": 2, "wemath": 2, "mmmu_pro_standard4": 2,
            "mmmu_pro_standard10": 2, "mmmu_pro_vision": 2, "mathverse": 3, "mathvision": 2, "mathvista": 3,
            "dynamath": 3, "babyvision": 2, "vlms_are_blind": 2, "charxiv_reasoning": 3, "charxiv_descriptive": 4,
            "mmvet": 2, "infovqa": 2, "ocrbench_v2_en": 3, "ocrbench_v2_zh": 2}


def _llm(root: Path) -> dict[str, int]:
    t = text
    t.write_jsonl(root / "AIME2025/aime2025-I.jsonl", [t.aime25_row(
        "Find the angle $\\theta$ in degrees. Please reason step by step, and put your final answer within \\boxed{}.",
        "336^\\circ")])
    t.write_jsonl(root / "AIME2025/aime2025-II.jsonl", [t.aime25_row("Find $m+n$.", "468")])
    t.write_parquet(root / "aime_2026/data/train-00000-of-00001.parquet",
                    [t.aime26_row(1, "Let $x$ be ... Find $x$.", 7), t.aime26_row(16, "Compute $N \\bmod 1000$.", 0)])
    t.write_parquet(root / "ceval-exam/computer_network/val-00000-of-00001.parquet",
                    [t.ceval_row(1, "下列协议中属于应用层的是____。", ["IP", "TCP", "HTTP", "ARP"], "c")], t.CEVAL_SCHEMA)
    t.write_parquet(root / "ceval-exam/accountant/val-00000-of-00001.parquet",
                    [t.ceval_row(0, "会计的基本职能是____。", ["核算与监督", "预测", "决策", "评价"], "A")], t.CEVAL_SCHEMA)
    t.write_parquet(root / "ceval-exam/accountant/test-00000-of-00001.parquet",
                    [t.ceval_row(0, "withheld", ["a", "b", "c", "d"], "")], t.CEVAL_SCHEMA)  # not read
    t.write_csv(root / "gpqa/gpqa_diamond.csv", [
        t.gpqa_row("recZ0wCxFpMXXYHkq", "Two quantum states with energies E1 and E2 ...", "10^-4 eV",
                   ["10^-11 eV", "10^-8 eV", "10^-9 eV"]),
        t.gpqa_row("recQwTMi7jCPnbK0u", "Which compound is chiral?", "2-butanol", ["ethanol", "methane", "water"],
                   "Chemistry")])
    uri = "data:image/png;base64," + base64.b64encode(t.png_bytes()).decode()
    t.write_parquet(root / "hle/data/test-00000-of-00001.parquet", [
        t.hle_row("668825f80a642802bdfeadfa", "What is the count shown in the figure?", "12", "exactMatch", uri),
        t.hle_row("66e8c2d5f5a6a7b1d2c3e4f5", "Which is largest?\n\nAnswer Choices:\nA. 1\nB. 2\nC. 3", "C",
                  "multipleChoice", "", "Physics")])
    t.write_csv(root / "IMO-AnswerBench/answerbench.csv", [
        t.imo_row("imo-bench-algebra-001", "Find all $N$ such that the sum is $\\frac{N^3-N^2+2}{4}$.", "3"),
        t.imo_row("imo-bench-geometry-007", "Find the angle.", "$\\frac{\\pi}{3}$", "Geometry")])
    t.write_parquet(root / "mmlu/all/test-00000-of-00001.parquet", [
        t.mmlu_row("Find the degree of Q(sqrt(2)) over Q.", "abstract_algebra", ["0", "4", "2", "6"], 2),
        t.mmlu_row("Which bone ...?", "anatomy", ["femur", "tibia", "ulna", "radius"], 3)])
    t.write_parquet(root / "MMLU-Pro/data/test-00000-of-00001.parquet", [
        t.mmlu_pro_row(70, "The symmetric group $S_n$ has $n!$ elements ...", [f"opt{i}" for i in range(10)], 9),
        t.mmlu_pro_row(71, "Padded?", ["yes", "no", "N/A", "maybe", "N/A"], 3, "philosophy")])
    t.write_arrow_stream(root / "mmlu-redux-2.0/anatomy/data-00000-of-00001.arrow", [
        t.redux_row("What is the embryological origin of the hyoid bone?",
                    ["first arch", "second arch", "third arch", "second and third"], 3, "ok"),
        t.redux_row("Which is wrong?", ["a", "b", "c", "d"], 0, "wrong_groundtruth", "B")])
    t.write_parquet(root / "MultiChallenge/data/test-00000-of-00001.parquet", [
        t.multichallenge_row("6724be3c7be8a0c5a4b8e1f2", "INFERENCE_MEMORY",
                             [("user", "I am vegan. Suggest a dinner."), ("assistant", "Lentil curry."),
                              ("user", "Now give me a recipe with a protein source.")],
                             "Does the recipe avoid all animal products?"),
        t.multichallenge_row("q2", "SELF_COHERENCE", [("user", "Is 7 prime?")], "Does it say no?", "NO")],
        t.MULTICHALLENGE_SCHEMA)
    return {"aime25": 2, "aime26": 2, "ceval": 2, "gpqa_diamond": 2, "hle": 2, "imo_answerbench": 2, "mmlu": 2,
            "mmlu_pro": 2, "mmlu_redux": 2, "multichallenge": 2}


def _video(root: Path, mp4: bytes) -> dict[str, int]:
    v = video
    v._mmvu(root / "MMVU", mp4, [
        v._mmvu_row(0, "Art", "open-ended", "Which technique is shown?", {k: "" for k in "ABCDE"}, "Dolly Zoom"),
        v._mmvu_row(1, "Chemistry", "multiple-choice", "How many grams?",
                    {"A": "10.0", "B": "5.0", "C": "12.0", "D": "15.0", "E": "20.0"}, "A")])
    mv = root / "MVBench"
    v._write(mv / "json/action_sequence.json", json.dumps([v._mvbench_row(
        "A1.mp4", "What happened after the person took the box?", ["Sat down.", "Ate.", "Left."], "Left.",
        start=3.5, end=9.0)]))
    v._write(mv / "json/object_interaction.json", json.dumps([v._mvbench_row(
        "B2.mp4", "Which object was thrown?", ["The cup.", "The bag."], "The bag.", start=1.0, end=2.0)]))
    v._write(mv / "video/star/Charades_segment/A1.mp4", mp4)  # the `video` branch's pre-cut copy
    v._write(mv / "star/Charades_v1_480/B2.mp4", mp4)  # main's uncut file, unpacked in place: a clip
    v._videomme(root / "Video-MME", mp4)  # one video with a subtitle file, one (.mkv) without
    sci, art = "validation_Physics_12", "validation_Art_Theory_3"
    vm = root / "VideoMMMU"
    v._write(vm / f"Art/{art}.mp4", mp4)
    v._write(vm / f"videos/Science/{sci}.mp4", mp4)
    v._parquet(vm / "Perception/test-00000-of-00001.parquet", [v._videommmu_row(
        art, "Which painter is named in the video?", ["A. Monet", "B. Manet"], "B", "multiple-choice")],
        v._videommmu_schema(False))
    v._parquet(vm / "Comprehension/test-00000-of-00001.parquet", [v._videommmu_row(
        sci, "What speed results, in m/s?", [], "3.14", "open")], v._videommmu_schema(False))
    v._parquet(vm / "Adaptation/test-00000-of-00001.parquet", [
        v._videommmu_row(art, "Which style is in <image 1>?", ["Cubism", "Baroque", "Gothic"], "C",
                         "multiple-choice", {"bytes": v._png(), "path": "q.png"}),
        v._videommmu_row(sci, "Name the law used in <image 1>.", [], "Ohm's law", "open",
                         {"bytes": None, "path": None})], v._videommmu_schema(True))
    return {"mmvu": 2, "mvbench": 2, "videomme": 2, "videomme_subtitles": 2, "videommmu": 4}


def write_paper_data(root: Path) -> dict[str, int]:
    """Writes a tiny copy of every benchmark release of the paper's suite under `root`, in the folders
    examples/paper/eval/*.yaml name; returns the number of questions each converter should give."""
    root = Path(root)
    return {**_vlm(root), **_llm(root), **_video(root, tiny_mp4())}
