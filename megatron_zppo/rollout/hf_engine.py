"""The in-process rollout engine: a HuggingFace `transformers` model in this process.

It is the default where no SGLang server is configured, what the CPU demo and the tests run,
and a reference for what an engine must return. Vision-language checkpoints (e.g. Qwen3.5) take
images through their own image processor, one request at a time. Log-probs are those of the raw model
distribution (before temperature/top-p), as SGLang returns them, so they compare directly with
the trainer's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
)

from megatron_zppo.images import expand_placeholders, is_vision_language, vision_inputs
from megatron_zppo.videos import VideoTokens, expand_videos, load_video_processor, video_inputs
from megatron_zppo.rollout.engine import MEMORY_TAGS, EngineStats, GenerateRequest, Generation, SamplingParams


class _PresencePenalty(LogitsProcessor):
    """Subtract `penalty` from every token already present in the generated part (as SGLang)."""

    def __init__(self, penalty: float, prompt_len: int):
        self.penalty, self.prompt_len = penalty, prompt_len

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1]:
            seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, generated, True)
            scores = scores - self.penalty * seen.to(scores.dtype)
        return scores


class HFEngine:
    def __init__(self, model_dir: str, *, dtype: torch.dtype = torch.float32, max_batch: int = 64,
                 seed: int = 0, name: str = "student"):
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # A vision-language checkpoint (a config with a vision tower) loads with its vision tower
        # (the causal-LM class would keep only the text model) and gets its image processor.
        vision = is_vision_language(AutoConfig.from_pretrained(model_dir))
        loader = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        self.model = loader.from_pretrained(model_dir, dtype=dtype).eval()
        self.max_batch, self.seed = max_batch, seed
        self.weight_version = "init"
        self.stats = EngineStats()
        self._calls = 0
        self._lock = threading.Lock()
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer in {model_dir} has no pad token; set one before serving it")
        self.image_processor = self.video_processor = None
        if vision:
            from transformers import AutoImageProcessor

            self.image_processor = AutoImageProcessor.from_pretrained(model_dir)
            self.video_processor = load_video_processor(model_dir)  # None: the checkpoint ships none

    def generate(self, requests: Sequence[GenerateRequest], params: SamplingParams) -> list[list[Generation]]:
        with self._lock:  # run.overlap=async calls from several threads; the model runs one batch at a time
            return self._generate(requests, params)

    def _generate(self, requests: Sequence[GenerateRequest], params: SamplingParams) -> list[list[Generation]]:
        for r in requests:
            if r.max_new_tokens is not None:  # only an aborted generation is continued, and this engine never aborts
                raise NotImplementedError(f"{self.name} engine: request {r.request_id!r} sets its own max_new_tokens")
            if r.images and self.image_processor is None:
                raise ValueError(f"{self.name} engine: request {r.request_id!r} has images but this engine "
                                 "serves a text-only model")
            if r.videos and self.video_processor is None:
                raise ValueError(f"{self.name} engine: request {r.request_id!r} has videos but the served model "
                                 "has no video processor (video_preprocessor_config.json)")
        t0 = time.perf_counter()
        out: list[list[Generation]] = [[] for _ in requests]
        text = [i for i, r in enumerate(requests) if not (r.images or r.videos)]  # batched together
        flat = [list(requests[i].prompt_ids) for i in text for _ in range(requests[i].n)]
        gens = []
        for b in range(0, len(flat), self.max_batch):
            gens += self._generate_batch(flat[b:b + self.max_batch], params)
        k = 0
        for i in text:
            out[i], k = gens[k:k + requests[i].n], k + requests[i].n
        for i, r in enumerate(requests):
            if r.images or r.videos:  # one request at a time: its n samples share the vision inputs
                out[i] = self._generate_with_images(r, params)
        self.stats.seconds_generating += time.perf_counter() - t0
        self.stats.tokens_generated += sum(len(g.response_ids) for gs in out for g in gs)
        return out

    def _generate_with_images(self, req: GenerateRequest, params: SamplingParams) -> list[Generation]:
        """`n` samples of one prompt with images or videos (they share the vision inputs)."""
        ids, inputs = self._with_images(req.prompt_ids, req.images, f"request {req.request_id!r}", req.videos)
        n = req.n
        return self._generate_batch([ids] * n, params, **{k: v.repeat(n, 1) for k, v in inputs.items()})

    def _with_images(self, prompt_ids: Sequence[int], images, where: str, videos=()) -> tuple[list[int], dict]:
        """The prompt with each placeholder expanded to its image's vision tokens (its video's
        timestamped frames), and the image (video) processor's tensors."""
        if self.image_processor is None:
            raise ValueError(f"{self.name} engine: {where} has images but this engine serves a text-only model")
        ids, inputs = list(prompt_ids), {}
        if images:
            vision, counts = vision_inputs(self.image_processor, images)
            ids = expand_placeholders(ids, self.model.config.image_token_id, counts, f"{self.name} engine, {where}")
            inputs = {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        if videos:
            vision, replacements = video_inputs(self.video_processor, self.tokenizer, VideoTokens.of(self.model.config),
                                                videos)
            ids = expand_videos(ids, self.model.config.video_token_id, replacements, f"{self.name} engine, {where}")
            inputs |= vision
        return ids, inputs

    def _image_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """HF's ``mm_token_type_ids`` (1: image, 2: video): without it, HF's Qwen-VL models silently
        give vision tokens plain text positions instead of the multimodal (M-RoPE) ones."""
        cfg = self.model.config
        return (ids == cfg.image_token_id).long() + 2 * (ids == cfg.video_token_id).long()

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, **model_inputs) -> list[Generation]:
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        if "pixel_values" in model_inputs or "pixel_values_videos" in model_inputs:
            model_inputs["mm_token_type_ids"] = self._image_positions(ids)
        processors = LogitsProcessorList()
        if params.presence_penalty:
            processors.append(_PresencePenalty(params.presence_penalty, width))
        sample = params.temperature > 0
        seed = params.seed if params.seed is not None else self.seed * 1_000_003 + self._calls
        self._calls += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=sample, max_new_tokens=params.max_new_tokens,
                temperature=params.temperature if sample else None, top_p=params.top_p if sample else None,
                top_k=(params.top_k if params.top_k > 0 else None) if sample else None,
                logits_processor=processors, output_logits=True, return_dict_in_generate=True,
                pad_token_id=pad, eos_token_id=list({eos, *params.stop_token_ids}), **model_inputs,
            )
        new = out.sequences[:, width:]
        logp = torch.stack(out.logits, dim=1).float().log_softmax(-1).gather(-1, new[..., None])[..., 0]
        stops = {eos, *params.stop_token_ids}
        return [self._finish(new[b], logp[b], stops) for b in range(len(prompts))]

    def _finish(self, tokens: torch.Tensor, logp: torch.Tensor, stops: set[int]) -> Generation:
        toks = tokens.tolist()
        end = next((i + 1 for i, t in enumerate(toks) if t in stops), None)
        reason = "stop" if end is not None else "length"
        end = end or len(toks)
        resp = toks[:end]
        return Generation(resp, logp[:end].tolist(), self.tokenizer.decode(resp, skip_special_tokens=True),
                          reason, self.weight_version)

    @torch.no_grad()
    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              images: Sequence[tuple] | None = None, videos: Sequence[tuple] | None = None) -> list[list[float]]:
        out = []
        for k, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
            row_images, row_videos = images[k] if images else (), videos[k] if videos else ()
            p, inputs = (self._with_images(p, row_images, f"score row {k}", row_videos) if row_images or row_videos
                         else (list(p), {}))  # fmt: skip
            ids = torch.tensor([p + list(r)])
            if inputs:
                inputs["mm_token_type_ids"] = self._image_positions(ids)
            logits = self.model(input_ids=ids, **inputs).logits[0, len(p) - 1:-1].float()
            out.append(logits.log_softmax(-1).gather(-1, torch.tensor(list(r))[:, None])[:, 0].tolist())
        return out

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> None:
        """Copy HF-named tensors into the model in memory; every parameter must be covered."""
        t0 = time.perf_counter()
        params = dict(self.model.named_parameters())
        staged: dict[str, torch.Tensor] = {}
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"{self.name} engine: weight {name!r} is not a parameter of the served model")
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(f"{self.name} engine: weight {name!r} has shape {tuple(tensor.shape)}, "
                                 f"model expects {tuple(params[name].shape)}")
            staged[name] = tensor
        # Tied parameters appear once under either name.
        missing = {n for n, p in params.items() if n not in staged
                   and not any(p is params[m] for m in staged)}
        if missing:
            raise ValueError(f"{self.name} engine: weight update at {version!r} lacks {sorted(missing)}; "
                             f"engine stays at {self.weight_version!r}")
        for name, tensor in staged.items():  # all checks passed: now apply, so a bad update changes nothing
            params[name].copy_(tensor)
        self.weight_version = version
        self.stats.seconds_syncing += time.perf_counter() - t0

    def release_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        """Nothing to hand over: this model lives in the trainer's process, not in a server holding
        GPU memory of its own (config refuses student.release_memory for an embedded engine)."""

    def resume_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        """Nothing was released (see `release_memory`)."""

    def sync_metrics(self) -> dict[str, float]:
        """{}: an in-memory copy is no transfer worth reporting; `stats.seconds_syncing` has its time."""
        return {}

    def health(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass
