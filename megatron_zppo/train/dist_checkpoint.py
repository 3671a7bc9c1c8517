"""Save and load the policy, its optimizer and its lr scheduler as a Megatron distributed checkpoint.

Every rank writes its own shards through ``megatron.core.dist_checkpointing``; tensors are stored
under their global (unsharded) shapes and layer numbers, so a checkpoint written under one
tensor/pipeline/data-parallel layout loads under another. The distributed optimizer's state is
saved in the ``fully_reshardable`` form (one Adam moment tensor per model parameter) for the same
reason. The save is synchronous: when ``save_checkpoint`` returns on every rank the files are
complete (the caller, e.g. ``megatron_zppo.run_checkpoint``, may then mark the directory complete).

Every checkpoint records the identity of the model it holds (its HF config's architecture and
sizes): loading it into another model is refused before Megatron's loader runs, naming both, and
a shard that cannot be read is reported naming the directory and its files, not as a bare
unpickling error from inside torch.

A checkpoint may hold the model alone (``optimizer=None``, what ``checkpoints_conversion`` writes)
or the model plus optimizer and scheduler (a training checkpoint). ``extra`` is a small picklable
dict saved with it, identical on all ranks.

Both functions are collective: every rank of the job must call them with the same directory,
on a filesystem all ranks share. ``dist_checkpointing`` starts worker processes to write, so a
script that saves needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_zppo.die_with_parent import die_with_parent
from megatron_zppo.run_checkpoint import CheckpointError, DamagedCheckpoint
from megatron_zppo.train.model import Policy

# Passed to the model's and optimizer's sharded_state_dict and stored with the checkpoint, so a
# load builds the same layout of keys the save wrote. "fully_reshardable" lets the distributed
# optimizer's state move between TP/PP/DP layouts; the default "dp_reshardable" would not.
SHARDING_METADATA = {
    "distrib_optim_sharding_type": "fully_reshardable",
    "distrib_optim_fully_reshardable_mem_efficient": False,
    "singleton_local_shards": False,
    "chained_optim_avoid_prefix": True,
}
_CONTENTS = "zppo_contents"  # which parts (optimizer, scheduler) a checkpoint holds
_IDENTITY = "zppo_model"  # the model it holds: see model_identity
_IDENTITY_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "vocab_size")


def model_identity(policy: Policy) -> dict:
    """What a checkpoint must match to load into `policy`: the architecture and the sizes that shape
    its tensors (a checkpoint's tensors carry shapes, but a mismatch shows only deep in the loader)."""
    hf_config = policy.bridge.hf_pretrained.config
    text = hf_config.get_text_config()
    identity = {"architectures": list(getattr(hf_config, "architectures", None) or [])}
    identity.update({f: getattr(text, f) for f in _IDENTITY_FIELDS if getattr(text, f, None) is not None})
    return identity


def _describe(identity: dict) -> str:
    arch = "/".join(identity.get("architectures") or []) or identity.get("model_type", "?")
    return f"{arch} (" + ", ".join(f"{k}={v}" for k, v in identity.items() if k != "architectures") + ")"


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    """torch's checkpoint errors carry each rank's exception; say which files were being read."""
    inner = [e for e, _ in getattr(err, "failures", {}).values()] or [err]
    first = f"{type(inner[0]).__name__}: {str(inner[0])[:300]}"
    if all(isinstance(e, KeyError) for e in inner):  # read fine, but holds other entries than asked for
        return CheckpointError(f"checkpoint {path} holds other entries than this run loads ({first}); it was "
                               "written by another kind of model or optimizer")
    shards = sorted(f.name for f in path.glob("*") if f.is_file())
    shown = ", ".join(shards[:4]) + (f" and {len(shards) - 4} more" if len(shards) > 4 else "")
    return DamagedCheckpoint(f"checkpoint {path}: its files ({shown}) cannot be read ({first}); one of them is "
                             "damaged (truncated, overwritten or cut short by a full disk)")


def _model_keys(policy: Policy) -> list[str]:
    """Megatron's names: "model" for one chunk, "model0", "model1", ... for virtual pipeline stages."""
    if len(policy.chunks) == 1:
        return ["model"]
    return [f"model{i}" for i in range(len(policy.chunks))]


def _sharded_state(policy: Policy, optimizer, metadata: dict, is_loading: bool) -> dict:
    from megatron.core.utils import unwrap_model

    # Unwrapped, so a DDP-wrapped training policy and a bare conversion model use the same keys
    # ("decoder.layers.0...", not "module.decoder.layers.0...").
    state = {
        key: unwrap_model(chunk).sharded_state_dict(metadata=metadata)
        for key, chunk in zip(_model_keys(policy), policy.chunks)
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=metadata)
    return state


def _inner_torch_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    megatron_optimizers = getattr(optimizer, "chained_optimizers", [optimizer])
    return [opt.optimizer for opt in megatron_optimizers if getattr(opt, "optimizer", None) is not None]


def _materialise_adam_state(optimizer) -> None:
    """Seam fix 1 of 2 for torch Adam's per-parameter ``step`` in Megatron's optimizers.

    Without Apex or Transformer Engine, Megatron falls back to ``torch.optim.AdamW``, which creates
    its state (``step``, ``exp_avg``, ``exp_avg_sq``) lazily on the first step. Megatron's checkpoint
    code assumes the state exists: ``DistributedOptimizer.state_dict()`` asserts that all params
    share one ``step`` (an AssertionError on a fresh optimizer, i.e. on every load and on a save
    before the first step), and the non-distributed optimizer's load creates the moments without a
    ``step`` (a ``KeyError: 'step'`` on the next update). We create the state exactly as torch's
    lazy initialisation would (zeros, ``step`` a float32 CPU scalar 0), so the next update is
    unchanged; only missing entries are added, existing ones are kept.
    """
    for inner in _inner_torch_optimizers(optimizer):
        if not isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
            continue
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state.setdefault("exp_avg", torch.zeros_like(param, memory_format=torch.preserve_format))
                state.setdefault("exp_avg_sq", torch.zeros_like(param, memory_format=torch.preserve_format))


def _load_optimizer_state(optimizer, state) -> None:
    """Seam fix 2 of 2: load a (chained) Megatron optimizer without losing torch Adam's ``step``.

    ``DistributedOptimizer.load_state_dict`` does two things in one call, and both go wrong with
    torch Adam: (1) it assigns one and the same ``step`` tensor to every parameter, and torch keeps
    that object, so Adam's in-place ``step += 1`` would advance the shared counter once per
    parameter per update (a silently wrong bias correction after a resume); (2) its
    ``fully_reshardable`` parameter-state load copies every tensor of a parameter's state from the
    checkpoint, ``step`` included, but the checkpoint holds ``step`` in the param groups only
    (``KeyError: 'step'``). We therefore run the two halves separately: the param groups and the
    shared step first, then the parameter state with ``step`` set aside, then give every parameter
    its own copy of the step back. Other optimizers (the non-distributed one) load as usual.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    subs = getattr(optimizer, "chained_optimizers", [optimizer])
    sub_states = [state] if len(subs) == 1 else [state[key] for key in sorted(state)]
    for sub, sub_state in zip(subs, sub_states, strict=True):
        if not (isinstance(sub, DistributedOptimizer) and "param_state" in sub_state):
            sub.load_state_dict(sub_state)
            continue
        sub_state = dict(sub_state)
        param_state = sub_state.pop("param_state")
        sharding = sub_state.pop("param_state_sharding_type")
        if sharding != "fully_reshardable":
            raise ValueError(f"optimizer state saved as {sharding!r}; this loader reads 'fully_reshardable' only")
        sub.load_state_dict(sub_state)
        steps = {param: s.pop("step") for param, s in sub.optimizer.state.items() if "step" in s}
        sub.load_parameter_state_from_fully_reshardable(param_state)
        for param, step in steps.items():
            sub.optimizer.state[param]["step"] = step.detach().clone()


def adam_step_counts(optimizer) -> set[float]:
    """The distinct Adam step counts held by this rank's parameters (one value when consistent)."""
    return {
        float(state["step"])
        for inner in _inner_torch_optimizers(optimizer)
        for state in inner.state.values()
        if "step" in state
    }


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(policy: Policy, optimizer, scheduler, directory: str, extra: dict | None = None) -> None:
    """Write the model (and optimizer and scheduler, when given) to ``directory``; collective.

    ``directory`` must be absent or empty: writing over another checkpoint could leave shards of
    an older layout next to the new ones.
    """
    from megatron.core import dist_checkpointing

    path = Path(directory)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"checkpoint directory {path} is not empty; save into a fresh directory")
    _barrier()  # every rank has looked before rank 0 creates it
    if not dist.is_initialized() or dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    _barrier()
    if optimizer is not None:
        _materialise_adam_state(optimizer)
    state = _sharded_state(policy, optimizer, SHARDING_METADATA, is_loading=False)
    state[_CONTENTS] = {"optimizer": optimizer is not None, "scheduler": scheduler is not None}
    state[_IDENTITY] = model_identity(policy)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["extra"] = dict(extra or {})
    _start_writer_queue()
    dist_checkpointing.save(state, str(path), content_metadata=SHARDING_METADATA)


def _start_writer_queue() -> None:
    """Megatron's checkpoint writer collects its results through a queue served by a multiprocessing
    Manager process that it starts on the first save and keeps for the process's life. Started by
    Megatron, that process outlives a parent killed with SIGKILL (and keeps multiprocessing's
    resource tracker alive with it); started here, the same kind of Manager first asks the kernel
    to kill it with us. Megatron reuses the queue it finds in `_results_queue`."""
    import multiprocessing
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", None) is None:
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))  # Megatron's own context
        manager.start(initializer=die_with_parent, initargs=(os.getpid(),))
        filesystem_async._results_queue = manager.Queue()


# What reading damaged files raises: torch's CheckpointException (a BaseException wrapping each
# rank's error), or the unpickling/zip/EOF errors themselves.
def _read_errors() -> tuple[type[BaseException], ...]:
    from torch.distributed.checkpoint.api import CheckpointException

    return CheckpointException, EOFError, pickle.UnpicklingError, RuntimeError, OSError


def _read_common(path: Path) -> tuple[dict, dict]:
    """The checkpoint's small replicated part: (common state, content metadata); shards untouched."""
    from megatron.core import dist_checkpointing

    if not (path / "metadata.json").is_file():
        raise CheckpointError(
            f"{path} is not a Megatron distributed checkpoint (no metadata.json); "
            "expected a directory written by save_checkpoint or checkpoints_conversion/hf_to_megatron.py"
        )
    try:
        common = dist_checkpointing.load_common_state_dict(str(path))
        metadata = dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or SHARDING_METADATA
    except _read_errors() as e:
        raise _unreadable(path, e) from None
    return common, metadata


def read_extra(directory: str) -> dict:
    """The ``extra`` dict a checkpoint was saved with, without loading any tensor."""
    return dict(_read_common(Path(directory))[0].get("extra", {}))


def _check_identity(path: Path, saved: dict | None, policy: Policy) -> None:
    current = model_identity(policy)
    if saved is not None and saved != current:
        hf_path = getattr(policy.bridge.hf_pretrained, "model_name_or_path", "") or "its HF checkpoint"
        raise CheckpointError(f"checkpoint {path} was written for {_describe(saved)}; this run builds "
                              f"{_describe(current)} from {hf_path}; resume with the model the checkpoint was "
                              "written for, or start a new run (another run.dir, without run.load)")


def load_checkpoint(policy: Policy, optimizer, scheduler, directory: str) -> dict:
    """Load ``directory`` into the already-built policy (and optimizer and scheduler); collective.

    The policy may use any TP/PP/DP layout. Pass ``optimizer=None`` / ``scheduler=None`` to load
    the weights only (e.g. the initial policy from a converted checkpoint). Returns ``extra``.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.utils import unwrap_model

    from megatron.core.dist_checkpointing.core import CheckpointingException

    path = Path(directory)
    common, metadata = _read_common(path)
    contents = common.get(_CONTENTS, {})
    _check_identity(path, common.get(_IDENTITY), policy)
    for part, wanted in (("optimizer", optimizer), ("scheduler", scheduler)):
        if wanted is not None and not contents.get(part, False):
            raise CheckpointError(f"checkpoint {path} holds no {part} state; pass {part}=None to load the weights only")
    if optimizer is not None:
        _materialise_adam_state(optimizer)
    state = _sharded_state(policy, optimizer, metadata, is_loading=True)
    try:
        loaded = dist_checkpointing.load(state, str(path))
    except CheckpointingException as e:  # keys or shapes that do not fit: another model (an old checkpoint)
        raise CheckpointError(f"checkpoint {path} does not fit this run's model {_describe(model_identity(policy))}: "
                              f"{str(e).splitlines()[0][:300]}") from None
    except _read_errors() as e:
        raise _unreadable(path, e) from None
    for key, chunk in zip(_model_keys(policy), policy.chunks):
        unwrap_model(chunk).load_state_dict(loaded[key], strict=True)
    if optimizer is not None:
        _load_optimizer_state(optimizer, loaded["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    return dict(loaded.get("extra", {}))
