"""The run's configuration: one dataclass per component, assembled from YAML + overrides.

`method.name` picks the method, a plug-in in methods/ whose knobs live in the subsection of its
name (`method.zppo`, `method.prefix`, ...). `run.algorithm` picks a preset: a method with its
switches and the buffer (ZPPO and its ablations, GRPO, the paper's baselines). Values written in
the YAML or on the command line win over the preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from megatron_zppo import methods
from megatron_zppo.config_io import ConfigError, Range, dump_yaml, from_dict, load_tree, to_dict
from megatron_zppo.data import SourceConfig
from megatron_zppo.core.loss import LossConfig
from megatron_zppo.overlap import DEFAULT_TIS_CAP, OVERLAPS
from megatron_zppo.rollout.pool import FaultToleranceConfig
from megatron_zppo.core.reformulate import ZppoConfig
from megatron_zppo.core.replay_buffer import BufferConfig
from megatron_zppo.core.advantages import AdvantageConfig
from megatron_zppo.core.dynamic_sampling import DynamicSamplingConfig
from megatron_zppo.methods.distill import JsdDistillConfig, LogitDistillConfig, SampledTokenDistillConfig
from megatron_zppo.methods.prefix import PrefixConfig
from megatron_zppo.rollout.sync import WeightSyncConfig
from megatron_zppo.train.optimizer import OptimizerConfig
from megatron_zppo.train.precision import PrecisionConfig

METHODS = tuple(methods.METHODS)  # the plug-ins, by name
# The subsections of `method`: each method's own knobs, read only when it runs (so one YAML can
# serve every preset of a comparison); the run directory's config.yaml keeps only the one read.
METHOD_KNOBS = {name: name for name in ("zppo", "prefix", "off_distill", "on_distill", "sampled_token_distill",
                                         "logit_distill")}
# algorithm -> the defaults it sets (dotted config keys)
# Named after the rows of the paper's tables (docs/method.md, "The paper's comparison"); "_buffer"
# is the paper's dagger, the prompt replay buffer.
PRESETS: dict[str, dict[str, object]] = {
    "zppo": {"method.name": "zppo", "buffer.enabled": True},
    "grpo": {"method.name": "grpo", "buffer.enabled": False},
    "grpo_buffer": {"method.name": "grpo", "buffer.enabled": True},
    # the ablations: BCQ and NCQ without the buffer, the buffer with one of them
    "grpo_both": {"method.name": "zppo", "buffer.enabled": False},
    "grpo_buffer_bcq": {"method.name": "zppo", "buffer.enabled": True, "method.zppo.ncq": False},
    "grpo_buffer_ncq": {"method.name": "zppo", "buffer.enabled": True, "method.zppo.bcq": False},
    # the advantage normalisation ablation (the default excludes zero-advantage groups)
    "zppo_no_norm": {"method.name": "zppo", "buffer.enabled": True, "advantage.normalize": "none"},
    "zppo_norm_with_zero": {"method.name": "zppo", "buffer.enabled": True, "advantage.normalize": "including_zero"},
    # hard questions get a hint or a prefix from a correct teacher response instead of BCQ and NCQ
    "grpo_buffer_hint": {"method.name": "hint", "buffer.enabled": True},
    "grpo_buffer_prefix": {"method.name": "prefix", "buffer.enabled": True},
    # the student matches the teacher's distributions: on its correct responses, or on the student's own
    "off_distill": {"method.name": "off_distill", "buffer.enabled": False},
    "off_distill_buffer": {"method.name": "off_distill", "buffer.enabled": True},
    "on_distill": {"method.name": "on_distill", "buffer.enabled": False},
    "on_distill_buffer": {"method.name": "on_distill", "buffer.enabled": True},
    # departures from the paper's rows, kept because they are useful (docs/method.md says how they differ)
    "zppo_no_compression": {"method.name": "zppo", "buffer.enabled": True, "method.zppo.compression": False},
    "grpo_buffer_question_hint": {"method.name": "question_hint", "buffer.enabled": True},
    "teacher_sft": {"method.name": "teacher_sft", "buffer.enabled": False},
    "teacher_sft_buffer": {"method.name": "teacher_sft", "buffer.enabled": True},
    "sampled_token_distill": {"method.name": "sampled_token_distill", "buffer.enabled": False},
    "sampled_token_distill_buffer": {"method.name": "sampled_token_distill", "buffer.enabled": True},
    "logit_distill": {"method.name": "logit_distill", "buffer.enabled": False},
    # beyond the paper: dynamic sampling after reformulation (core/dynamic_sampling.py); on GRPO it is DAPO's filter
    "zppo_ds": {"method.name": "zppo", "buffer.enabled": True, "rollout.dynamic_sampling.enabled": True},
    "grpo_buffer_ds": {"method.name": "grpo", "buffer.enabled": True, "rollout.dynamic_sampling.enabled": True},
}
# Presets renamed on 2026-12-07, when they took the paper's row names: old -> what to use now.
_SFT = "teacher_sft (what it ran before: cross-entropy on the teacher's correct responses)"
_SAMPLED = "sampled_token_distill (what it ran before: the sampled tokens' teacher log-probs through the policy loss)"
RENAMED = {
    "zppo_no_buffer": "grpo_both", "zppo_no_bcq": "grpo_buffer_ncq", "zppo_no_ncq": "grpo_buffer_bcq",
    "hint": "grpo_buffer_hint (a hint from a correct teacher response), or grpo_buffer_question_hint (what it "
            "ran before: a hint from the question alone)",
    "prefix": "grpo_buffer_prefix",
    "off_policy_distill": f"off_distill (the paper's: JSD to the teacher's distributions), or {_SFT}",
    "off_policy_distill_buffer": f"off_distill_buffer, or {_SFT.replace('teacher_sft', 'teacher_sft_buffer')}",
    "on_policy_distill": f"on_distill (the paper's: JSD over the whole vocabulary), or {_SAMPLED}",
    "on_policy_distill_buffer": f"on_distill_buffer, or {_SAMPLED.replace('distill ', 'distill_buffer ', 1)}",
}
MODES = ("train", "rollout_only", "train_only")
PRE_CAPS = ("hardest", "admissible")


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/zppo"  # outputs: resolved config, logs, metrics, checkpoints, dumped rollouts
    seed: Annotated[int, Range(ge=0)] = 0  # seeds question order, sampling, the replay buffer and Megatron's RNG
    steps: Annotated[int, Range(ge=0)] = 200  # rollout steps in all (a resumed run continues up to it)
    # stop after the step that brings the student's generated tokens (the run's, all steps) to this; 0: off.
    # Compares methods at equal generation cost (rollout.dynamic_sampling draws more per step)
    token_budget: Annotated[int, Range(ge=0)] = 0
    updates_per_step: Annotated[int, Range(ge=1)] = 4  # I: mini-batches (optimizer steps) per rollout step
    save_every: Annotated[int, Range(ge=1)] = 50  # checkpoint every this many steps, and after the last one
    eval_every: Annotated[int, Range(ge=0)] = 0  # evaluate every this many steps; 0: before and after training only
    algorithm: str = "zppo"  # preset: the defaults of method.* and buffer.enabled it sets (PRESETS)
    load: str = ""  # a checkpoint directory, or "auto" for the latest one under dir/checkpoints
    # after SIGTERM the step in progress gets this long to finish (then the checkpoint); past it the step
    # is abandoned and the run exits 143 on its last complete checkpoint. Keep it inside Slurm's signal lead.
    stop_timeout_s: Annotated[float, Range(gt=0)] = 300.0
    # rollout_only: generate and write rollouts to dir/rollouts, no training.
    # train_only: train on rollouts read back from `rollouts_from` (for debugging the trainer).
    mode: str = "train"
    rollouts_from: str = ""  # train_only: the run directory whose rollouts/ are read back
    dump_rollouts: bool = False  # in train mode too, write each step's rollouts to dir/rollouts (not train_only)
    # one_step: step k+1's rollouts are made while the trainer trains on step k, by weights one version
    # behind (overlap.py). async: the servers generate continuously, up to run.max_staleness steps ahead,
    # generations in flight continued across weight syncs (stream.py). Both set loss.tis_cap's default to
    # overlap.DEFAULT_TIS_CAP. none: the synchronous loop.
    overlap: str = "none"
    # async: the most weight versions a trained token may be behind the trainer (k; 0: synchronous)
    max_staleness: Annotated[int, Range(ge=0)] = 2
    # one_step: wait at most this long after training; async: for a step's batch, a pause, a checkpoint
    overlap_timeout_s: Annotated[float, Range(gt=0)] = 3600.0

    def __post_init__(self):
        if self.algorithm not in PRESETS:
            raise ValueError(f"run.algorithm {self.algorithm!r} unknown; expected one of {sorted(PRESETS)}")
        if self.mode not in MODES:
            raise ValueError(f"run.mode {self.mode!r} unknown; expected one of {MODES}")
        if self.overlap not in OVERLAPS:
            raise ValueError(f"run.overlap {self.overlap!r} unknown; expected one of {OVERLAPS}")
        if self.overlap != "none" and self.mode != "train":
            raise ValueError(f"run.overlap={self.overlap!r} overlaps rollouts with training; run.mode={self.mode!r} "
                             "does not do both (use run.overlap=none)")
        if self.dump_rollouts and self.mode == "train_only":
            raise ValueError(f"run.dump_rollouts writes the rollouts a run makes; run.mode=train_only makes none (it "
                             f"reads them from run.rollouts_from={self.rollouts_from!r})")


@dataclass(frozen=True)
class MethodConfig:
    """The method (a plug-in in methods/) and its knobs. `tau` and `rho_aug` are the zone every
    method works in: which questions are hard, how many of them get new prompts, and when the
    buffer lets a question go."""

    name: str = "zppo"  # the method: zppo, grpo, hint, prefix, a distillation, or a departure (docs/method.md)
    tau: Annotated[float, Range(gt=0, le=1)] = 0.5  # hard if a question's plain accuracy < tau
    # a buffered question graduates once its plain accuracy >= this; null: tau (the paper)
    graduate_at: Annotated[float | None, Range(gt=0, le=1)] = None
    rho_aug: Annotated[float, Range(ge=0)] = 0.25  # cap on hard questions and their prompts, a fraction of n_new
    # which hard questions take the cap's places: the hardest, before the teacher runs (hardest, the paper's
    # algorithm listing), or the hardest of those whose prompts can be built, the teacher run on every hard
    # question first (admissible, its appendix's wording; differs when a question's only branch needs the teacher)
    pre_cap: str = "hardest"
    zppo: ZppoConfig = field(default_factory=ZppoConfig)  # ZPPO's prompts for hard questions: BCQ, NCQ, compression
    prefix: PrefixConfig = field(default_factory=PrefixConfig)  # the Prefix baseline
    off_distill: JsdDistillConfig = field(default_factory=JsdDistillConfig)  # the JSD on the teacher's responses
    on_distill: JsdDistillConfig = field(default_factory=JsdDistillConfig)  # the JSD on the student's own samples
    # the sampled tokens' teacher log-probs through the policy loss
    sampled_token_distill: SampledTokenDistillConfig = field(default_factory=SampledTokenDistillConfig)
    logit_distill: LogitDistillConfig = field(default_factory=LogitDistillConfig)  # forward KL on the student's samples

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"method.name {self.name!r} unknown; expected one of {METHODS}")
        if self.pre_cap not in PRE_CAPS:
            raise ValueError(f"method.pre_cap {self.pre_cap!r} unknown; expected one of {PRE_CAPS}")
        if self.name == "zppo" and not (self.zppo.bcq or self.zppo.ncq):
            raise ValueError("method.zppo.bcq and method.zppo.ncq are both false: no hard question would get a "
                             "prompt; that is GRPO (method.name=grpo, or run.algorithm=grpo_buffer)")

    @property
    def needs_teacher(self) -> bool:
        """The method asks the teacher (its plug-in says: methods.needs_teacher)."""
        return methods.needs_teacher(self)

    @property
    def uses_teacher_tokens(self) -> bool:
        """Teacher token ids go into the student's prompts or loss: the tokenizers must be one."""
        return methods.uses_teacher_tokens(self.name)


@dataclass(frozen=True)
class EngineConfig:
    hf_path: str = ""  # HF checkpoint: the trainer's initial weights, the tokenizer, the embedded engine
    engine: str = "embedded"  # embedded (in-process transformers) | sglang
    url: str = ""  # SGLang server or router, for engine=sglang ...
    urls: list[str] = field(default_factory=list)  # ... or several servers of one policy (an EnginePool) ...
    addresses: str = ""  # ... or the JSON file tools/launch_sglang.py writes
    api_key: str = ""  # SGLang's --api-key, sent as a Bearer token; empty: none
    admin_api_key: str = ""  # SGLang's --admin-api-key (weight updates, cache, abort); default api_key
    temperature: Annotated[float, Range(ge=0)] = 1.0  # rollout sampling temperature
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0  # rollout nucleus sampling
    # several servers: lose one and go on with the rest (rollout/pool.py)
    fault_tolerance: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)

    def __post_init__(self):
        if self.engine not in ("embedded", "sglang"):
            raise ValueError(f"engine {self.engine!r} unknown; expected embedded or sglang")
        if self.engine == "sglang" and not (self.url or self.urls or self.addresses):
            raise ValueError("engine is sglang but none of url, urls, addresses is given")
        if sum(map(bool, (self.url, self.urls, self.addresses))) > 1:
            raise ValueError(f"give one of url, urls, addresses; got url={self.url!r}, urls={self.urls!r}, "
                             f"addresses={self.addresses!r}")


@dataclass(frozen=True)
class StudentConfig(EngineConfig):
    """The student's engine: the teacher's settings, and how its weights follow the trainer's."""

    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)  # SGLang student only
    # Co-located SGLang student (same GPUs as the trainer, server started with --enable-memory-saver):
    # the server releases its GPU memory while the trainer trains and takes it back around the sync.
    release_memory: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.release_memory and self.engine != "sglang":
            raise ValueError("release_memory is for a co-located SGLang server; this engine is "
                             f"{self.engine!r}")


@dataclass(frozen=True)
class RolloutConfig:
    n_new: Annotated[int, Range(ge=1)] = 384  # new questions per rollout step
    # G_S: student rollouts per prompt; a group of one always has advantage 0 (nothing to learn)
    group_size: Annotated[int, Range(ge=2)] = 8
    teacher_group_size: Annotated[int, Range(ge=1)] = 4  # G_T: teacher rollouts per question sent to the teacher
    max_new_tokens: Annotated[int, Range(ge=1)] = 12288  # response length limit of student and teacher rollouts
    max_prompt_tokens: Annotated[int, Range(ge=1)] = 4096  # plain prompts; longer questions are skipped and counted
    max_reformulated_prompt_tokens: Annotated[int, Range(ge=1)] = 16384  # BCQ/NCQ carry candidates, so they may be longer
    # keep drawing until the step holds enough groups with a gradient, filtered after reformulation
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)


@dataclass(frozen=True)
class RewardConfig:
    grader: str = "auto"  # auto: each question's metadata["grader"], else "math" (mathruler)
    workers: Annotated[int, Range(ge=1)] = 2  # grader processes
    # per grade, from when a ready worker takes it (worker start-up does not count)
    timeout_s: Annotated[float, Range(gt=0)] = 10.0


@dataclass(frozen=True)
class DataConfig:
    train: list[SourceConfig] = field(default_factory=list)  # question sources for training, concatenated
    # name -> sources; names listed in `held_out` are task families never used in training.
    eval: dict[str, list[SourceConfig]] = field(default_factory=dict)
    held_out: list[str] = field(default_factory=list)  # eval names reported as held-out families
    # A suite file (docs/evaluation.md; the paper's: examples/paper/eval/all.yaml) evaluated with the
    # eval sets: its benchmarks and family averages go into the metrics and the summary.
    eval_suite: str = ""
    eval_data_root: str = ""  # the folder the suite's relative benchmark paths are under


@dataclass(frozen=True)
class EvalConfig:
    """Decoding for evaluation; defaults are the paper's (docs/method.md, "Hyperparameters")."""

    temperature: Annotated[float, Range(ge=0)] = 0.6  # sampling temperature
    top_p: Annotated[float, Range(gt=0, le=1)] = 0.95  # nucleus sampling
    top_k: Annotated[int, Range(ge=-1)] = 20  # top-k sampling; -1: off
    presence_penalty: Annotated[float, Range(ge=-2, le=2)] = 1.5  # penalises tokens already generated
    max_new_tokens: Annotated[int, Range(ge=1)] = 12288  # response length limit
    samples_per_question: Annotated[int, Range(ge=1)] = 1  # a question's score is the mean over its samples


@dataclass(frozen=True)
class TrainConfig:
    """Layout and batching of the Megatron trainer (build.make_trainer turns it into train/'s own
    ParallelConfig and ModelConfig); the optimizer has its own section, `optimizer`."""

    tensor_parallel: Annotated[int, Range(ge=1)] = 1  # Megatron tensor-parallel size
    pipeline_parallel: Annotated[int, Range(ge=1)] = 1  # Megatron pipeline-parallel size
    micro_batch_size: Annotated[int, Range(ge=1)] = 8  # sequences per micro-batch (fixed rows)
    layer_spec: str = "auto"  # auto | local | transformer_engine
    logprob_chunk_size: Annotated[int, Range(ge=1)] = 512  # response positions per output-layer chunk (logits memory)
    recompute: str = "none"  # activation recomputation: none | selective (attention core) | full (whole layers)
    # Token budget of a micro-batch (prompt + response, images expanded); set: micro-batches are packed
    # under it and balanced across DP ranks by tokens (micro_batch_size is then unused). null: fixed rows.
    max_tokens_per_micro_batch: Annotated[int | None, Range(ge=1)] = None

    def __post_init__(self):
        if self.recompute not in ("none", "selective", "full"):
            raise ValueError(f"train.recompute {self.recompute!r} unknown; expected none, selective or full")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)  # the run: length, checkpoints, mode, preset
    student: StudentConfig = field(default_factory=StudentConfig)  # the policy trained: its checkpoint and rollout engine
    teacher: EngineConfig = field(default_factory=EngineConfig)  # BCQ responses, compression, hints, distillation
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # questions, group sizes and lengths of a step
    method: MethodConfig = field(default_factory=MethodConfig)  # the method, its zone (tau, rho_aug) and its knobs
    buffer: BufferConfig = field(default_factory=BufferConfig)  # the replay buffer of hard questions
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)  # group-centred rewards, normalised
    loss: LossConfig = field(default_factory=LossConfig)  # the clipped policy loss
    reward: RewardConfig = field(default_factory=RewardConfig)  # grading responses against gold answers
    data: DataConfig = field(default_factory=DataConfig)  # question sources for training and evaluation
    train: TrainConfig = field(default_factory=TrainConfig)  # the Megatron trainer's layout and batching
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # AdamW at a constant learning rate
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)  # dtype, FP8 (checked at start-up)
    eval: EvalConfig = field(default_factory=EvalConfig)  # decoding for evaluation
    templates: str = ""  # directory of prompt templates; empty: the package defaults

    def __post_init__(self):
        if not self.student.hf_path:
            raise ValueError("student.hf_path is required")
        if self.run.overlap != "none" and self.student.release_memory:
            raise ValueError(f"run.overlap={self.run.overlap!r} generates while the trainer trains, but "
                             "student.release_memory gives the server's GPU memory to the trainer then; turn one off")
        if self.run.overlap == "async" and self.rollout.dynamic_sampling.enabled:
            raise ValueError("rollout.dynamic_sampling with run.overlap=async is not built: a further round draws "
                             "questions while later steps' batches are in flight; use run.overlap=one_step or none")
        if self.rollout.dynamic_sampling.enabled and not methods.uses_group_advantages(self.method.name):
            raise ValueError(f"rollout.dynamic_sampling keeps groups whose rewards differ, for a policy gradient on "
                             f"group-centred advantages; method.name={self.method.name!r} trains on none (turn it off)")
        if self.method.needs_teacher and not self.teacher.hf_path and self.teacher.engine == "embedded":
            raise ValueError(f"method.name={self.method.name!r} (run.algorithm={self.run.algorithm!r}) uses the teacher "
                             "but teacher.hf_path is empty")


# Keys that moved: old dotted key -> its place now. An old key is refused with one line naming it.
MOVED = {
    # the optimizer's settings have their own section since 2026-12-01
    **{f"train.{old}": f"optimizer.{new}" for old, new in (
        ("lr", "lr"), ("adam_beta1", "beta1"), ("adam_beta2", "beta2"), ("adam_eps", "eps"),
        ("weight_decay", "weight_decay"), ("clip_grad", "clip_grad"),
        ("use_distributed_optimizer", "use_distributed_optimizer"))},
    # one `method` section since 2026-12-07: the method's name, its zone and its own knobs
    "zppo.tau": "method.tau", "zppo.rho_aug": "method.rho_aug", "zppo.bcq": "method.zppo.bcq",
    "zppo.ncq": "method.zppo.ncq", "zppo.compression": "method.zppo.compression",
    "method.objective": "method.name", "method.hard_prompts": "method.name",
    "method.divergence": "method.sampled_token_distill.divergence",
    "method.jsd_beta": "method.sampled_token_distill.jsd_beta", "method.prefix_fraction": "method.prefix.fraction",
    # the presets took the paper's row names on 2026-12-07 (RENAMED): the old on-policy distillation's knobs
    "method.on_policy_distill.divergence": "method.sampled_token_distill.divergence",
    "method.on_policy_distill.jsd_beta": "method.sampled_token_distill.jsd_beta",
    "method.kd_temperature": "method.logit_distill.temperature", "method.kd_top_k": "method.logit_distill.top_k",
}


def load_config(path: str | None, overrides: list[str]) -> Config:
    tree = load_tree(path, overrides)
    where = path or "overrides"
    # The teacher's weights never change and its servers keep their memory: settings only the student has.
    unused = sorted(set(tree.get("teacher") or {}) & {"weight_sync", "release_memory"})
    if unused:
        raise ConfigError(f"{where}: {', '.join(f'teacher.{k}' for k in unused)} is unused (only the student's weights "
                          "are synced, and only a co-located student releases memory); remove it")
    moved = [f"{old} -> {new}" for old, new in MOVED.items() if _has(tree, old)]
    if moved:
        raise ConfigError(f"{where}: these keys moved: {'; '.join(moved)}")
    if isinstance(tree.get("advantage"), str):
        old = tree["advantage"]
        raise ConfigError(f"{where}: advantage is a section since 2026-12-07: advantage.normalize: excluding_zero "
                          f"(was reinforce_pp) or group (was grpo), got advantage: {old!r}")
    algorithm = (tree.get("run") or {}).get("algorithm", RunConfig.algorithm)
    if algorithm in RENAMED:
        raise ConfigError(f"{where}: run.algorithm {algorithm!r} was renamed: use {RENAMED[algorithm]}")
    named = (tree.get("method") or {}).get("name")
    if named in RENAMED and named not in METHODS:
        raise ConfigError(f"{where}: method.name {named!r} was renamed: use {RENAMED[named]} (as run.algorithm or "
                          "its method.name)")
    if algorithm not in PRESETS:
        raise ConfigError(f"run.algorithm {algorithm!r} unknown; expected one of {sorted(PRESETS)}")
    preset = PRESETS[algorithm]["method.name"]
    if named is not None and "algorithm" in (tree.get("run") or {}) and named != preset:
        raise ConfigError(f"{where}: run.algorithm={algorithm!r} is a preset of method {preset!r}, but method.name="
                          f"{named!r}; set one of them")
    for key, value in PRESETS[algorithm].items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node.setdefault(leaf, value)
    if (tree.get("run") or {}).get("overlap") in ("one_step", "async"):  # off-policy: correct it, unless told
        tree.setdefault("loss", {}).setdefault("tis_cap", DEFAULT_TIS_CAP)
    return from_dict(Config, tree)


def dump_config(cfg: Config, path) -> None:
    """The resolved config as the run used it, loadable again (`--config` it): other methods' knobs,
    which it never read, are left out."""
    tree, own = to_dict(cfg), METHOD_KNOBS.get(cfg.method.name)
    tree["method"] = {k: v for k, v in tree["method"].items() if k == own or k not in METHOD_KNOBS.values()}
    dump_yaml(tree, path)


def _has(tree: dict, dotted: str) -> bool:
    *sections, leaf = dotted.split(".")
    for section in sections:
        tree = tree.get(section)
        if not isinstance(tree, dict):
            return False
    return leaf in tree
