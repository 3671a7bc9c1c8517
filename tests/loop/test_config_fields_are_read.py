"""Every config field is read somewhere: a declared setting that nothing reads (as `run.eval_every`
once was, set to 50 in every paper recipe) silently does nothing."""

import ast
import dataclasses
import typing
from pathlib import Path

from megatron_zppo.config import Config

ROOT = Path(__file__).resolve().parents[2]


def _sections(cls, where=""):
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner = [t for o in (typing.get_args(hint) or (hint,)) for t in (typing.get_args(o) or (o,))
                 if dataclasses.is_dataclass(t)]
        if inner:
            yield from _sections(inner[0], f"{where}{f.name}.")
        else:
            yield f"{where}{f.name}", f.name


def test_every_config_field_is_read_by_the_code():
    sources = [*(ROOT / "megatron_zppo").rglob("*.py"), ROOT / "pretrain_zppo.py", *(ROOT / "tools").glob("*.py")]
    read = {n.attr for p in sources for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Attribute)}
    fields = dict(_sections(Config))
    assert len(fields) > 80
    assert sorted(k for k, name in fields.items() if name not in read) == []
