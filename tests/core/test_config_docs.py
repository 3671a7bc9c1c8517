"""docs/configuration.md is generated from the config dataclasses (tools/config_docs.py): it must match
what the generator writes now, name every key, and no field may ship without a meaning."""

import dataclasses
import importlib.util
import sys
import typing
from pathlib import Path

import pytest

from megatron_zppo.config import Config

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("config_docs", REPO / "tools" / "config_docs.py")
config_docs = importlib.util.module_from_spec(_spec)
sys.modules["config_docs"] = config_docs
_spec.loader.exec_module(config_docs)


@dataclasses.dataclass(frozen=True)
class _HalfDocumented:
    said: int = 1  # a field with a meaning
    unsaid: int = 2


def _leaf_keys(cls, prefix=""):
    """Dotted keys of every non-section field; `[]` for a list's items, `<name>` for a mapping's keys."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], prefix + f.name
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            yield from _leaf_keys(hint, key + ".")
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(args[0]):
            yield from _leaf_keys(args[0], key + "[].")
        elif typing.get_origin(hint) is dict and typing.get_args(args[1]) and \
                dataclasses.is_dataclass(typing.get_args(args[1])[0]):
            yield from _leaf_keys(typing.get_args(args[1])[0], key + ".<name>[].")
        else:
            yield key


def test_the_reference_on_disk_is_what_the_generator_writes_now():
    on_disk = config_docs.OUT.read_text() if config_docs.OUT.exists() else ""
    assert on_disk == config_docs.render(), "docs/configuration.md is stale: run `python tools/config_docs.py`"


def test_every_leaf_key_of_the_config_has_a_row():
    doc = config_docs.render()
    keys = list(_leaf_keys(Config))
    assert len(keys) > 100 and "student.weight_sync.strategy" in keys and "data.train[].kind" in keys
    assert [k for k in keys if f"| `{k}` |" not in doc] == []


def test_the_allowed_values_come_from_the_checks_in_the_code():
    from megatron_zppo.config import OVERLAPS, PRESETS

    rows = {r.key: r for r in config_docs.key_rows(Config)}
    assert rows["run.overlap"].allowed == ", ".join(f"`{v}`" for v in OVERLAPS)
    assert rows["run.algorithm"].allowed.count("`") == 2 * len(PRESETS)
    assert rows["train.recompute"].allowed == "`none`, `selective`, `full`"  # a literal tuple in __post_init__
    assert rows["optimizer.beta2"].allowed == ">= 0 and < 1"
    assert rows["loss.dual_clip_c"] == ("loss.dual_clip_c", "float | null", "`10.0`", "> 1 or `null`",
                                        rows["loss.dual_clip_c"].meaning)


def test_a_field_without_a_comment_is_refused_naming_class_and_field():
    with pytest.raises(config_docs.UndocumentedField, match=r"_HalfDocumented: field\(s\) unsaid have no comment"):
        list(config_docs.key_rows(_HalfDocumented))


def test_check_mode_fails_with_the_command_to_run_when_the_file_differs(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("# an old reference\n")
    monkeypatch.setattr(config_docs, "OUT", stale)
    monkeypatch.setattr(config_docs, "ROOT", tmp_path)
    assert config_docs.main(["--check"]) == 1
    assert "configuration.md is stale: run `python tools/config_docs.py`" in capsys.readouterr().err
    assert config_docs.main([]) == 0 and config_docs.main(["--check"]) == 0
