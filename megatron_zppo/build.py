"""Build a run's components from its config: engines, teacher, graders, data, buffer.

Kept apart from the loop so that pretrain_zppo.py reads as the algorithm, and so that tests and
tools (evaluation, the toy-model builder) build the same pieces the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from megatron_zppo import methods
from megatron_zppo.config import Config, EngineConfig, EvalConfig, StudentConfig
from megatron_zppo.config_io import ConfigError
from megatron_zppo.data import QuestionStream, load_questions
from megatron_zppo.errors import RunError
from megatron_zppo.evaluation.judge import EvalJudge
from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.images import is_vision_language
from megatron_zppo.videos import VideoTokens, load_video_processor
from megatron_zppo.loop import NoEngine, NoUpdate, RolloutPhase, UpdatePhase
from megatron_zppo.core.prompts import DEFAULT_DIR, PromptEncoder, PromptTemplates
from megatron_zppo.core.replay_buffer import ReplayBuffer
from megatron_zppo.rollout.collect import score_samples
from megatron_zppo.rollout.engine import RolloutEngine, SamplingParams
from megatron_zppo.teacher import Teacher


def make_trainer(cfg: Config, hf_path: str | None = None):
    """The Megatron trainer (initialises torch.distributed and the parallel groups), given train/'s
    own small configs; `hf_path` replaces student.hf_path (tools that train another model)."""
    from megatron_zppo.train.model import ModelConfig
    from megatron_zppo.train.parallel import ParallelConfig
    from megatron_zppo.train.rl_trainer import Batching, RLTrainer

    t, p = cfg.train, cfg.precision
    model = ModelConfig(hf_path or cfg.student.hf_path, p.torch_dtype_name, t.layer_spec, p.fp8, p.fp8_param_gather,
                        recompute=t.recompute)
    return RLTrainer(model, ParallelConfig(t.tensor_parallel, t.pipeline_parallel, seed=cfg.run.seed), cfg.optimizer,
                     Batching(t.micro_batch_size, t.max_tokens_per_micro_batch, t.logprob_chunk_size),
                     methods.trainer_teacher(cfg))


def server_urls(cfg: EngineConfig, name: str) -> list[str]:
    """The engine's server URLs: `url` (one server or a router), `urls`, or the launcher's addresses
    file. From that file the student gets every one of its servers (each needs every weight update,
    which a router does not forward), the teacher its router or single server."""
    if cfg.url or cfg.urls:
        return [cfg.url] if cfg.url else list(cfg.urls)
    path = Path(cfg.addresses)
    if not path.is_file():
        raise FileNotFoundError(f"{name}.addresses: {path} does not exist (run tools/launch_sglang.py first)")
    addr = json.loads(path.read_text())
    urls = addr.get("student") if name == "student" else [addr.get(f"{name}_router") or addr.get(name)]
    urls = [u for u in (urls if isinstance(urls, list) else [urls]) if u]
    if not urls:
        raise ValueError(f"{path} has no address for the {name}: {addr}")
    return urls


def make_engine(cfg: EngineConfig, name: str, seed: int) -> RolloutEngine:
    if cfg.engine == "sglang":
        from megatron_zppo.rollout.sglang_engine import SGLangEngine
        from megatron_zppo.rollout.sync import policy_engine

        urls = server_urls(cfg, name)
        vocab = vocab_size(cfg.hf_path)
        engines = [SGLangEngine(u, name=name if len(urls) == 1 else f"{name}{i}", api_key=cfg.api_key or None,
                                admin_api_key=cfg.admin_api_key or None, vocab_size=vocab)
                   for i, u in enumerate(urls)]
        # The student's one sync over all of its servers (one process group, or one each with
        # weight_sync.fanout=per_server); the teacher's weights never change, so it gets none.
        return policy_engine(engines, name, cfg.weight_sync if isinstance(cfg, StudentConfig) else None,
                             cfg.fault_tolerance)
    from megatron_zppo.rollout.hf_engine import HFEngine

    return HFEngine(cfg.hf_path, name=name, seed=seed)


def vocab_size(hf_path: str) -> int | None:
    """Rows of the model's embedding: every token id a server returns for it must be below. None
    (no check) when the checkpoint is not on this machine; the main job has checked that it is."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(hf_path, local_files_only=True).get_text_config().vocab_size)
    except (OSError, ValueError):
        return None


def make_encoder(hf_path: str) -> Callable[..., list[int]]:
    """Prompt text -> token ids with the model's own tokenizer and chat template."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(hf_path)
    tokenizer = AutoTokenizer.from_pretrained(hf_path)
    if not is_vision_language(hf_config):
        return PromptEncoder(tokenizer)
    video_processor = load_video_processor(hf_path)
    return PromptEncoder(tokenizer, AutoImageProcessor.from_pretrained(hf_path), video_processor,
                         VideoTokens.of(hf_config) if video_processor is not None else None)


def make_decoder(hf_path: str) -> Callable[[list[int]], str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_path)
    return partial(tok.decode, skip_special_tokens=True)


def check_inputs(cfg: Config) -> None:
    """What can be refused before anything starts: combinations the run cannot carry out here."""
    from megatron_zppo.train.precision import check_precision, detect

    check_model_paths(cfg)  # first: the checks below read the models
    te_version, capability, cuda = detect()
    check_precision(cfg.precision, te_version, capability, cuda_version=cuda, layer_spec=cfg.train.layer_spec)
    check_shared_tokenizer(cfg)
    check_vision_support(cfg)
    if cfg.data.eval_suite:  # its files are found, its converters and protocols known, before training
        from megatron_zppo.evaluation.suite import SuiteError, load_suite

        try:
            suite = load_suite(cfg.data.eval_suite, cfg.data.eval_data_root)
        except SuiteError as e:
            raise ConfigError(f"data.eval_suite: {e} (data.eval_data_root={cfg.data.eval_data_root!r}; "
                              "data.eval_suite='' runs without the suite)") from None
        both = sorted(set(suite.benchmarks) & set(cfg.data.eval))
        if both:
            raise ConfigError(f"data.eval and data.eval_suite={cfg.data.eval_suite} both name {both}; rename one")


def model_paths(cfg: Config) -> list[tuple[str, str]]:
    """(config key, path) of every Hugging Face model directory the run reads."""
    out = [("student.hf_path", cfg.student.hf_path), ("teacher.hf_path", cfg.teacher.hf_path),
           ("student.weight_sync.disk_support_dir", cfg.student.weight_sync.disk_support_dir or "")]
    return [(key, path) for key, path in out if path]


def check_model_paths(cfg: Config) -> None:
    """Every model path is a local HF checkpoint (or a hub id already in the local cache), before
    anything starts. The run is offline-first: without this a relative typo such as
    `toy_models/studnet` reads as a hub id and transformers goes to the network for it, to fail
    minutes later with a message about repositories. Set HF_HUB_OFFLINE=0 to allow downloads."""
    for key, path in model_paths(cfg):
        check_model_path(key, path)


def check_model_path(key: str, path: str) -> None:
    p = Path(path)
    if p.exists():
        if not (p / "config.json").is_file():
            raise RunError(f"{key}={path!r} exists but is not a Hugging Face checkpoint directory (no config.json "
                           "in it); expected a directory written by save_pretrained or `hf download`")
        return
    if _in_hub_cache(path) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("0", "false", "no"):
        return
    hint = (f" and {path!r} is not in the Hugging Face cache either; the run is offline-first and does not "
            f"download models: fetch it first (`hf download {path}`), set HF_HUB_OFFLINE=0 to allow downloads, "
            "or fix the path") if _is_hub_id(path) else "; fix the path"
    raise RunError(f"{key}={path!r}: the local directory {p.resolve()} does not exist{hint}")


def _is_hub_id(path: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def _in_hub_cache(path: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return _is_hub_id(path) and isinstance(try_to_load_from_cache(path, "config.json"), str)


def check_shared_tokenizer(cfg: Config) -> None:
    """Methods that move token ids between teacher and student (distillation, Prefix) need one
    vocabulary; a mismatch would train on garbage without any error, so refuse it up front."""
    if not cfg.method.uses_teacher_tokens:
        return
    from transformers import AutoTokenizer

    student, teacher = (AutoTokenizer.from_pretrained(p) for p in (cfg.student.hf_path, cfg.teacher.hf_path))
    if student.get_vocab() != teacher.get_vocab() or student.chat_template != teacher.chat_template:
        raise ConfigError(f"method.name={cfg.method.name!r} passes token ids between teacher and student, but "
                         f"the tokenizers of {cfg.student.hf_path} and {cfg.teacher.hf_path} differ (vocabulary "
                         "or chat template); use a teacher of the student's family")


def check_vision_support(cfg: Config) -> None:
    """Refuse the vision-language combinations that cannot run: the trainer takes Qwen3.5-VL
    students only, and on-policy distillation scores the student's samples with the teacher engine,
    which takes their images in process but not on SGLang yet."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(cfg.student.hf_path)
    except OSError:
        return  # not readable here; the trainer reports it when it loads the checkpoint
    if not is_vision_language(hf_config):
        return
    from megatron_zppo.train.qwen35_vl import QWEN35_VL_MODEL_TYPES

    if hf_config.model_type not in QWEN35_VL_MODEL_TYPES:
        raise ConfigError(f"student.hf_path {cfg.student.hf_path} is a {hf_config.model_type!r} vision-language "
                         f"checkpoint; the trainer's vision path covers {list(QWEN35_VL_MODEL_TYPES)} (Qwen3.5-VL)")
    if cfg.method.name == "sampled_token_distill" and cfg.teacher.engine == "sglang":
        raise ConfigError(f"method.name={cfg.method.name!r} with the vision-language student {cfg.student.hf_path} "
                         "and teacher.engine=sglang: scoring the student's samples with their images is not built for "
                         "SGLang yet; use teacher.engine=embedded, or another method")


def templates(cfg: Config) -> PromptTemplates:
    return PromptTemplates.load(cfg.templates or DEFAULT_DIR)


def make_teacher(cfg: Config, tmpl: PromptTemplates) -> Teacher | None:
    if not (cfg.teacher.hf_path or cfg.teacher.engine == "sglang"):
        return None
    engine = make_engine(cfg.teacher, "teacher", cfg.run.seed + 1)
    sampling = SamplingParams(cfg.teacher.temperature, cfg.teacher.top_p, max_new_tokens=cfg.rollout.max_new_tokens)
    return Teacher(engine, make_encoder(cfg.teacher.hf_path), tmpl, sampling, cfg.method.zppo.summary_max_tokens)


def make_data(cfg: Config) -> tuple[QuestionStream, dict]:
    questions = load_questions(cfg.data.train)
    return QuestionStream(questions, cfg.run.seed), {q.id: q for q in questions}


def make_buffer(cfg: Config) -> ReplayBuffer:
    return ReplayBuffer(cfg.buffer.capacity, cfg.method.tau, cfg.run.seed, graduate_at=cfg.method.graduate_at)


def make_graders(cfg: Config) -> GraderPool:
    return GraderPool(cfg.reward.grader, cfg.reward.workers, cfg.reward.timeout_s)


def make_rollout_phase(cfg: Config, student: RolloutEngine | None = None, questions=None) -> RolloutPhase:
    """Everything the rollout phase needs, on the rank that holds the engines; the method's
    pieces are chosen here, once. `student` and `questions` replace the configured ones (tests)."""
    tmpl = templates(cfg)
    if questions is None:
        stream, by_id = make_data(cfg)
    else:
        stream, by_id = QuestionStream(list(questions), cfg.run.seed), {q.id: q for q in questions}
    teacher, graders = make_teacher(cfg, tmpl), make_graders(cfg)
    grade = partial(score_samples, questions=by_id, graders=graders, judge=teacher.judge if teacher else None)
    r, b = cfg.rollout, cfg.buffer
    return RolloutPhase(
        student or make_engine(cfg.student, "student", cfg.run.seed), make_encoder(cfg.student.hf_path), graders,
        grade, stream, make_buffer(cfg), tmpl,
        methods.build_hard_prompts(cfg, teacher, tmpl, make_decoder(cfg.student.hf_path), grade),
        methods.build_objective(cfg, teacher, grade), r,
        SamplingParams(cfg.student.temperature, cfg.student.top_p, max_new_tokens=r.max_new_tokens),
        cfg.method.tau, cfg.method.rho_aug, b.rho_replay if b.enabled else 0.0, cfg.run.seed, cfg.method.pre_cap,
        eval_judge=EvalJudge(teacher.engine, teacher.encode) if teacher else None)


def make_update(cfg: Config, trainer, phase: RolloutPhase | None) -> UpdatePhase:
    """The training half of a step on this rank; `phase` exists on the rank that holds the engines.
    Training needs no teacher: the other ranks build the method's objective without one."""
    objective = phase.objective if phase is not None else methods.build_objective(cfg)
    engine = phase.student if phase is not None else NoEngine()
    kind = NoUpdate if cfg.run.mode == "rollout_only" else UpdatePhase
    return kind(objective, trainer, engine, overlap=cfg.run.overlap, seed=cfg.run.seed,
                colocated=cfg.student.release_memory, check_versions=cfg.run.mode != "train_only",
                max_staleness=cfg.run.max_staleness)


def eval_sampling(e: EvalConfig, seed: int) -> SamplingParams:
    return SamplingParams(e.temperature, e.top_p, e.top_k, e.max_new_tokens, e.presence_penalty, seed=seed)
