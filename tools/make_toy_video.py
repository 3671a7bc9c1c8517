"""Tiny synthetic video questions for the CPU tests and the VL demo: how many squares appear?

    python tools/make_toy_video.py --out toy_models/video_data

Each video is 8 frames of 64x64 pixels at 4 frames a second (MPEG-4 part 2 in an MP4 file). 1 to
4 squares appear one after another, each alone on the canvas for two frames (one temporal patch
of Qwen3-VL's vision tower) in its own 32-px quadrant; the frames after the last square are
blank. No single frame shows the answer: the count is read across frames. The toy video
processor (2 frames a second) samples frames 0, 2, 5 and 7: one per square.

Writes `{split}.jsonl` (id, question, answer, videos: [path]) with the MP4 files under `split/`.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path

QUESTION = "How many squares appear in the video?"
FRAMES, SIZE, FPS = 8, 64, 4
COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 30)]


def frames(rng: random.Random, count: int):
    """[FRAMES, SIZE, SIZE, 3] uint8: square k alone in frames 2k and 2k + 1."""
    import numpy as np

    out = np.full((FRAMES, SIZE, SIZE, 3), 250, np.uint8)
    for k, cell in enumerate(rng.sample(range(4), count)):
        side = rng.randint(16, 26)
        x, y = 32 * (cell % 2) + rng.randint(1, 31 - side), 32 * (cell // 2) + rng.randint(1, 31 - side)
        out[2 * k : 2 * k + 2, y : y + side, x : x + side] = rng.choice(COLOURS)
    return out


def encode_mp4(video) -> bytes:
    """The frames as an MP4 file (MPEG-4 part 2: encoded and decoded by PyAV's own FFmpeg)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.options = {"qscale": "2"}  # near-lossless: the squares' edges stay put
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def toy_video(rng: random.Random, count: int) -> bytes:
    return encode_mp4(frames(rng, count))


def write_videos(out: Path, split: str, n: int, seed: int) -> list[dict]:
    """n video questions as JSONL records (videos saved as MP4 files under out/split)."""
    rng = random.Random(seed)
    (out / split).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        count = rng.randint(1, 4)
        path = out / split / f"{i:05d}.mp4"
        path.write_bytes(toy_video(rng, count))
        rows.append({"id": f"video-{split}-{i}", "question": QUESTION, "answer": str(count), "videos": [str(path)]})
    (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="toy_models/video_data")
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--eval", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    write_videos(Path(args.out), "train", args.train, args.seed)
    write_videos(Path(args.out), "eval", args.eval, args.seed + 1)
    print(f"toy videos: {args.train} train and {args.eval} eval questions -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
