"""The paper's training-data recipe as pure rules, for tools/prepare_vl_data.py.

The recipe reads several sources in priority order. Each record names its sub-dataset; a canonical
map makes one sub-dataset found in two sources one name, and only the highest-priority source's
records of it are kept. Sub-datasets are capped per tier by a seeded sample; a pass-rate filter
drops questions a small reference model already answers; exact duplicate questions are dropped;
free-form answers are told apart so that the LLM judge grades them.

`plan` applies every rule that needs no image decoded. `fill_cap` then walks one sub-dataset's
records in their seeded order, asking the costly per-record checks (image decode, size, answer
length, duplicates) only until the cap is met: at the paper's scale (about a million source
records, a few thousand kept per sub-dataset) most records are never decoded.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megatron_zppo.core.records import Question
from megatron_zppo.data import DataError

NO_SUBSET = "no sub-dataset name"
SUBSET_TAKEN = "sub-dataset taken from a higher-priority source"
NOT_TIERED = "sub-dataset in no tier"
OVER_CAP = "over its tier cap"
DUPLICATE = "duplicate question"

TIER_CAPS_EXAMPLE = "{2800: [ai2d, geo170k], 1400: [raven]}"
CANONICAL_EXAMPLE = "{ai2d: [stem-ai2d_merged, AI2D]}"


@dataclass(frozen=True)
class Record:
    """One well-formed source record and what the recipe needs to know about it."""

    question: Question
    source: int  # 0: the highest-priority source (the first --source)
    index: int  # position in its source: the output keeps source order
    where: str  # file and line (or row), for error messages
    subset: str | None = ""  # canonical sub-dataset name; "": no sub-dataset field asked for; None: record has none
    pass_rate: Any = None  # the pass-rate field as the record gives it; None: absent


@dataclass(frozen=True)
class Recipe:
    caps: dict[str, int] = field(default_factory=dict)  # canonical sub-dataset -> at most this many records
    uncapped: str = "keep"  # a sub-dataset in no tier (with caps given): keep | drop
    pass_rate_field: str = ""
    max_pass_rate: float | None = None  # drop records whose pass rate is above this
    pass_rate_sources: frozenset[int] = frozenset()  # the sources the pass-rate filter applies to
    seed: int = 0


@dataclass
class Group:
    """One sub-dataset of one source, its records in the order they are considered."""

    source: int
    subset: str
    cap: int | None
    records: list[Record]


def parse_canonical(data: Any, where: str) -> dict[str, str]:
    """`{canonical: [name, ...]}` -> `{name: canonical}`; a canonical name also stands for itself."""
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{where}: expected a mapping of canonical name -> list of sub-dataset names, "
                        f"e.g. {CANONICAL_EXAMPLE}; got {_shape(data)}")
    out: dict[str, str] = {}
    for canon, names in data.items():
        for name in [canon, *names]:
            if not isinstance(name, str) or not name:
                raise DataError(f"{where}: sub-dataset name {name!r} (under {canon!r}) is not a non-empty string")
            if out.get(name, canon) != canon:
                raise DataError(f"{where}: sub-dataset {name!r} is given two canonical names, {out[name]!r} and "
                                f"{canon!r}; expected one")
            out[name] = canon
    return out


def parse_tier_caps(data: Any, where: str, canonical: dict[str, str]) -> dict[str, int]:
    """`{cap: [sub-dataset, ...]}` -> `{canonical sub-dataset: cap}`."""
    if not isinstance(data, dict) or not data:
        raise DataError(f"{where}: expected a mapping of cap -> list of sub-dataset names, e.g. {TIER_CAPS_EXAMPLE}; "
                        f"got {_shape(data)}")
    caps: dict[str, int] = {}
    for key, names in data.items():
        cap = _cap(key, where)
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DataError(f"{where}: tier {key!r} holds {names!r:.80}; expected a list of sub-dataset names")
        for name in names:
            canon = canonical.get(name, name)
            if caps.get(canon, cap) != cap:
                alias = f" (canonical name {canon!r})" if canon != name else ""
                raise DataError(f"{where}: sub-dataset {name!r}{alias} is named in two tiers, caps {caps[canon]} "
                                f"and {cap}; name each sub-dataset in one tier")
            caps[canon] = cap
    return caps


def _cap(key: Any, where: str) -> int:
    if isinstance(key, str) and key.strip().isdigit():  # JSON keys are always strings
        key = int(key)
    if not isinstance(key, int) or isinstance(key, bool) or key < 1:
        raise DataError(f"{where}: tier cap {key!r} is not a positive integer; expected a mapping of cap -> list "
                        f"of sub-dataset names, e.g. {TIER_CAPS_EXAMPLE}")
    return key


def load_mapping(path: str, what: str) -> Any:
    """A small YAML (or JSON) file's content."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise DataError(f"{what} file {path} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise DataError(f"{what} file {path} is not YAML or JSON: {e}") from None


def _shape(data: Any) -> str:
    return f"a {type(data).__name__}: {data!r:.80}" if not isinstance(data, dict) else f"{data!r:.80}"


def plan(records: list[Record], recipe: Recipe) -> tuple[list[Group], list[tuple[Record, str]]]:
    """The sub-datasets' groups in the order they are considered (source priority, then first
    appearance), a capped group's records in a seeded random order (sources are often sorted, so
    the first N would not be a sample), and the records dropped by a rule that needs no image."""
    owner = subset_owners(records)
    groups: dict[tuple[int, str], Group] = {}
    dropped = []
    for r in records:
        reason = _early_reason(r, owner, recipe)
        if reason:
            dropped.append((r, reason))
            continue
        key = (r.source, r.subset)
        if key not in groups:
            groups[key] = Group(r.source, r.subset, recipe.caps.get(r.subset), [])
        groups[key].records.append(r)
    for g in groups.values():
        if g.cap is not None:  # seeded per sub-dataset: adding one leaves the others' samples as they were
            random.Random(f"{recipe.seed}/{g.subset}").shuffle(g.records)
    return list(groups.values()), dropped


def subset_owners(records: Iterable[Record]) -> dict[str, int]:
    """Each named sub-dataset's highest-priority source (the lowest index)."""
    owner: dict[str, int] = {}
    for r in records:
        if r.subset:
            owner[r.subset] = min(owner.get(r.subset, r.source), r.source)
    return owner


def _early_reason(r: Record, owner: dict[str, int], recipe: Recipe) -> str | None:
    if r.subset is None:
        return NO_SUBSET
    if r.subset and owner[r.subset] < r.source:
        return SUBSET_TAKEN
    if recipe.caps and recipe.uncapped == "drop" and r.subset not in recipe.caps:
        return NOT_TIERED
    if recipe.max_pass_rate is not None and r.source in recipe.pass_rate_sources:
        rate = pass_rate_value(r, recipe.pass_rate_field)
        if rate is not None and rate > recipe.max_pass_rate:
            return f"pass rate above {recipe.max_pass_rate:g}"
    return None


def pass_rate_value(r: Record, field_name: str) -> float | None:
    """The record's pass rate, or None when it has none; anything but a number is an error."""
    v = r.pass_rate
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise DataError(f"{r.where} (record {r.question.id!r}): pass-rate field {field_name!r} is {v!r:.60}; "
                        "expected a number")
    return float(v)


def choose_pass_rate_sources(names: list[str] | None, sources: list[str], carrying: set[int],
                             field_name: str) -> frozenset[int]:
    """The sources `names` gives (numbers in priority order from 1, or sources as given); without
    names, every source whose records carry the field: a source without it is not filtered, rather
    than emptied or silently kept whole."""
    if not names:
        return frozenset(carrying)
    chosen = set()
    for s in names:
        k = int(s) - 1 if s.isdigit() else sources.index(s) if s in sources else -1
        if not 0 <= k < len(sources):
            raise DataError(f"--pass-rate-sources {s!r} is not a source; expected a number from 1 to {len(sources)} "
                            f"(the order given) or one of {sources}")
        if k not in carrying:
            raise DataError(f"--pass-rate-sources names {sources[k]}, but none of its records has the field "
                            f"{field_name!r}; check --pass-rate-field")
        chosen.add(k)
    return frozenset(chosen)


def fill_cap(records: list[Record], cap: int | None,
             admit: Callable[[Record], str | None]) -> Iterator[tuple[Record, str | None]]:
    """Each record with why it is dropped (None: kept). `admit` judges records in order until `cap`
    are kept (a record it drops does not count); the rest are over the cap, never judged."""
    kept = 0
    for r in records:
        if cap is not None and kept >= cap:
            yield r, OVER_CAP
            continue
        reason = admit(r)
        kept += reason is None
        yield r, reason


def question_key(text: str, media_digests: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """Two records ask the same question when their texts match up to case and spacing and their
    images (and videos) are the same, in order."""
    return " ".join(text.lower().split()), tuple(media_digests)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[^\W\d_]{2,}")  # two or more letters, any alphabet


def answer_words(answer: str) -> int:
    """Runs of two or more letters outside LaTeX command names: `x`, `B`, `\\frac`, `3.5` are no words."""
    return len(_WORD.findall(_LATEX_COMMAND.sub(" ", answer)))


def is_free_form(answer: str, min_words: int = 4) -> bool:
    """A gold answer the math grader cannot be trusted with: a number, an expression, a choice
    letter or a short phrase has fewer than `min_words` words; a sentence has at least that many."""
    return answer_words(answer) >= min_words
