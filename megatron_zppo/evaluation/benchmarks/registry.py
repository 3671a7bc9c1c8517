"""The converters by name: each reads one benchmark's public release from local files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from megatron_zppo.core.records import Question
from megatron_zppo.evaluation.benchmarks.layout import LayoutError


@dataclass(frozen=True)
class Converter:
    name: str
    read: Callable[[Path], list[Question]]
    layout: str  # the release it follows: repository, files, columns, card revision


CONVERTERS: dict[str, Converter] = {}


def converter(name: str, layout: str):
    """Registers `fn(path) -> list[Question]` as the converter `name`."""
    def register(fn):
        if name in CONVERTERS:
            raise ValueError(f"converter {name!r} registered twice")
        CONVERTERS[name] = Converter(name, fn, layout)
        return fn
    return register


def convert(name: str, path: str | Path) -> list[Question]:
    import megatron_zppo.evaluation.benchmarks  # noqa: F401  (registers every converter)

    if name not in CONVERTERS:
        raise LayoutError(f"benchmark converter {name!r} unknown; expected one of {sorted(CONVERTERS)}")
    return CONVERTERS[name].read(Path(path))
