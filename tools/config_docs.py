"""Writes docs/configuration.md, the reference of every config key, from the config dataclasses.

The dataclasses stay the single source: a key's type, default and range come from its declaration,
its allowed values from the check that refuses the others (`self.x not in CHOICES` in
`__post_init__`), and its meaning from the comment on its line or the comment lines directly above
it. A field with neither stops the generator, naming it, so no key ships undocumented.

    python tools/config_docs.py          # write docs/configuration.md
    python tools/config_docs.py --check  # exit 1 if the file is stale (tests/core/test_config_docs.py)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import io
import json
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs as a script from any directory

from megatron_zppo.config import PRESETS, Config, RewardConfig, RunConfig, TrainConfig  # noqa: E402
from megatron_zppo.config_io import Range  # noqa: E402
from megatron_zppo.data import SourceConfig  # noqa: E402
from megatron_zppo.grader_pool import JUDGE  # noqa: E402
from megatron_zppo.overlap import DEFAULT_TIS_CAP  # noqa: E402
from megatron_zppo.rewards import GRADERS  # noqa: E402
from megatron_zppo.train.model import ModelConfig  # noqa: E402

OUT = ROOT / "docs" / "configuration.md"


class Row(NamedTuple):
    key: str
    type: str
    default: str
    allowed: str
    meaning: str


class UndocumentedField(ValueError):
    pass


@functools.cache
def _source(path: str) -> tuple[list[str], dict[int, str], ast.Module]:
    """A file's lines, its comments by line number, and its syntax tree."""
    text = Path(path).read_text()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.COMMENT}
    return text.splitlines(), comments, ast.parse(text)


def _class_node(cls) -> tuple[ast.ClassDef, list[str], dict[int, str]]:
    lines, comments, tree = _source(inspect.getsourcefile(cls))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    return node, lines, comments


def meanings(cls) -> dict[str, str]:
    """Field name -> the comment on the field's line, else the comment lines directly above it
    (in the class that declares the field: a subclass inherits its base's meanings)."""
    found = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        found.update(_own_meanings(base))
    missing = [f.name for f in dataclasses.fields(cls) if not found.get(f.name)]
    if missing:
        raise UndocumentedField(f"{cls.__module__}.{cls.__qualname__}: field(s) {', '.join(missing)} have no "
                                "comment; say what each means on its line or the line above")
    return found


def _own_meanings(cls) -> dict[str, str]:
    node, lines, comments = _class_node(cls)
    found = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, n = [], stmt.lineno - 1
        while n > 0 and lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        found[stmt.target.id] = comments.get(stmt.end_lineno) or comments.get(stmt.lineno) or " ".join(above)
    return found


def checked_values(cls) -> dict[str, tuple]:
    """Field name -> the values its class (or a dataclass it extends) accepts, read from each
    `self.<field> not in <values>` check."""
    found = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        found.update(_own_checked_values(base))
    return found


def _own_checked_values(cls) -> dict[str, tuple]:
    node, _, _ = _class_node(cls)
    module = sys.modules[cls.__module__]
    found = {}
    for n in ast.walk(node):
        if (isinstance(n, ast.Compare) and isinstance(n.ops[0], ast.NotIn) and isinstance(n.left, ast.Attribute)
                and isinstance(n.left.value, ast.Name) and n.left.value.id == "self"):
            values = n.comparators[0]
            found[n.left.attr] = tuple(getattr(module, values.id) if isinstance(values, ast.Name)
                                       else ast.literal_eval(values))
    return found


def _one_of(values) -> str:
    return ", ".join(f"`{v}`" for v in values)


@functools.cache
def _checked_elsewhere() -> dict[tuple[type, str], str]:
    """(dataclass, field) -> allowed values, for fields checked outside their dataclass: when the
    trainer's ModelConfig or the grader pool is built."""
    graders = f"{_one_of([*GRADERS, JUDGE])}, or `module:function`"
    return {(TrainConfig, "layer_spec"): _one_of(checked_values(ModelConfig)["layer_spec"]),
            (RewardConfig, "grader"): f"`auto`, {graders}", (SourceConfig, "grader"): f"empty, {graders}"}


def _bare(tp):
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def _nested(tp) -> tuple[str, type] | None:
    """(key suffix, dataclass) when a field holds a section, a list of them, or named lists of them."""
    tp, args = _bare(tp), typing.get_args(_bare(tp))
    if dataclasses.is_dataclass(tp):
        return ".", tp
    if typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0]):
        return "[].", args[0]
    if typing.get_origin(tp) is dict and _nested(args[1]):
        suffix, item = _nested(args[1])
        return ".<name>" + suffix, item
    return None


def type_name(tp) -> str:
    tp, origin, args = _bare(tp), typing.get_origin(_bare(tp)), typing.get_args(_bare(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "section"
    if origin is list:
        item = args[0]
        return f"list of {item.__name__.removesuffix('Config').lower()}s" if dataclasses.is_dataclass(item) else \
            f"list[{type_name(item)}]"
    if origin is dict:
        return f"mapping {type_name(args[0])} -> {type_name(args[1])}"
    return {type(None): "null", Any: "any"}.get(tp) or tp.__name__


def _yaml(value) -> str:
    return f"`{json.dumps(value)}`"  # JSON scalars and lists read the same in YAML


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _yaml(f.default)
    if f.default_factory is dataclasses.MISSING:
        return "required"
    return "" if dataclasses.is_dataclass(f.default_factory) else _yaml(f.default_factory())  # a section: its rows


def key_rows(cls, prefix: str = "") -> Iterator[Row]:
    """One row per key of `cls`, sections followed by their own keys; refuses an undocumented field."""
    hints, meaning, checked = typing.get_type_hints(cls, include_extras=True), meanings(cls), checked_values(cls)
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        ranges = [str(m) for m in getattr(hint, "__metadata__", ()) if isinstance(m, Range)]
        if ranges and type(None) in typing.get_args(_bare(hint)):
            ranges.append("or `null`")
        allowed = _one_of(checked[f.name]) if f.name in checked else \
            _checked_elsewhere().get((cls, f.name), " ".join(ranges))
        yield Row(key, type_name(hint), _default(f), allowed, meaning[f.name])
        if nested := _nested(hint):
            yield from key_rows(nested[1], key + nested[0])


HEADER = f"""# Configuration reference

Generated by `python tools/config_docs.py` from the config dataclasses (`megatron_zppo.config.Config`
and the sections it holds); do not edit it by hand. To change a key's description, edit the comment
beside the field and run the tool again; `tests/core/test_config_docs.py` fails when this file is stale.

## Setting keys

A run reads one YAML file (`--config`) whose nesting follows the dotted keys below, then `key=value`
overrides from the command line, for example

    python pretrain_zppo.py --config examples/cpu_toy/zppo.yaml run.steps=10 method.tau=0.4

An override's value is parsed as YAML (`3`, `0.5`, `true`, `null`, `[a, b]`). An unknown key, a value
of the wrong type or outside its range is refused at load, naming the key. A value given in the file
or as an override wins over the `run.algorithm` preset, which wins over the default below
(`run.overlap=one_step` also sets `loss.tis_cap`'s default, to {DEFAULT_TIS_CAP:g}). The resolved
config is written to `<run.dir>/config.yaml`.

In the tables, `[]` stands for any item of a list and `<name>` for any key of a mapping.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[Row]) -> list[str]:
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    return lines + [f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.allowed)} | {_cell(r.meaning)} |"
                    for r in rows]


def _presets() -> list[str]:
    lines = ["## Presets (`run.algorithm`)", "",
             f"Each algorithm sets these defaults (the default algorithm is `{RunConfig.algorithm}`).", "",
             "| `run.algorithm` | sets |", "|---|---|"]
    for name, keys in PRESETS.items():
        lines.append(f"| `{name}` | {', '.join(f'`{k}={json.dumps(v)}`' for k, v in keys.items())} |")
    return lines


def render() -> str:
    rows, meaning = list(key_rows(Config)), meanings(Config)
    out = [HEADER, "## Top-level keys", "", *_table([r for r in rows if "." not in r.key and r.type != "section"])]
    for f in dataclasses.fields(Config):
        if _nested(typing.get_type_hints(Config)[f.name]):
            intro = meaning[f.name][0].upper() + meaning[f.name][1:]
            out += ["", f"## `{f.name}`", "", intro if intro.endswith(".") else intro + ".", "",
                    *_table([r for r in rows if r.key.startswith(f.name + ".")])]
    return "\n".join([*out, "", *_presets()]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help=f"exit 1 if {OUT.relative_to(ROOT)} is stale")
    args = ap.parse_args(argv)
    text = render()
    if not args.check:
        OUT.write_text(text)
        print(f"wrote {OUT.relative_to(ROOT)}")
        return 0
    current = OUT.read_text() if OUT.exists() else ""
    if current == text:
        return 0
    diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), "on disk", "generated", lineterm=""))
    print("\n".join(diff[:40]))
    print(f"{OUT.relative_to(ROOT)} is stale: run `python tools/config_docs.py`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
