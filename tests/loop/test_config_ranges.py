"""Every numeric config value is checked at load against a declared range (config_io.Range)."""

import dataclasses
import typing

import pytest

from megatron_zppo.config import Config, load_config
from megatron_zppo.config_io import ConfigError, Range

TOY = "examples/cpu_toy/zppo.yaml"


def _numeric_fields(cls, where=""):
    """(dotted key, type hint) of every int/float field reachable from `cls`, lists of sections included."""
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls, include_extras=True)[f.name]
        bare = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        options = typing.get_args(bare) or (bare,)
        key = f"{where}{f.name}"
        nested = [t for o in options for t in (typing.get_args(o) or (o,)) if dataclasses.is_dataclass(t)]
        if nested:
            yield from _numeric_fields(nested[0], f"{key}.")
        elif any(o in (int, float) for o in options):
            yield key, hint


def test_every_numeric_field_declares_its_range():
    fields = dict(_numeric_fields(Config))
    assert len(fields) > 40  # the walk really reaches the sections
    missing = [k for k, hint in fields.items()
               if not any(isinstance(m, Range) for m in getattr(hint, "__metadata__", ()))]
    assert not missing, f"numeric config fields without a Range: {missing}"


@pytest.mark.parametrize("override", [
    "run.save_every=0", "reward.workers=0", "optimizer.lr=-1", "train.micro_batch_size=0",
    "eval.samples_per_question=0", "reward.timeout_s=0", "optimizer.beta2=1", "rollout.group_size=1",
    "method.tau=0", "buffer.capacity=0", "loss.dual_clip_c=1", "student.top_p=0", "optimizer.lr=.nan",
    "reward.timeout_s=.inf", "student.weight_sync.master_port=70000", "method.sampled_token_distill.jsd_beta=1",
])
def test_an_out_of_range_value_is_refused_naming_key_value_and_range(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as e:
        load_config(TOY, [override])
    assert str(e.value).startswith(f"{key}: ") and "out of range; expected a value" in str(e.value)


def test_a_range_rule_reads_as_its_bounds():
    assert str(Range(ge=0, lt=1)) == ">= 0 and < 1"
    Range(gt=0).check(1e-9, "x")
    with pytest.raises(ConfigError, match=r"x: 0 is out of range; expected a value > 0"):
        Range(gt=0).check(0, "x")


def test_null_stays_allowed_where_the_field_is_optional():
    assert load_config(TOY, ["loss.dual_clip_c=null"]).loss.dual_clip_c is None
