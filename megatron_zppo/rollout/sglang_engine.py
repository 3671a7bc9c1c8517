"""`RolloutEngine` over one SGLang 0.5.23 server's HTTP API (the request and response shapes of that release).

The loop calls plain synchronous methods; underneath, requests run concurrently on a private
asyncio loop (one httpx client, at most `max_concurrency` in flight). A batch is all-or-nothing:
every request retries on connection errors, 5xx (a server restarting or still starting) and
answers outside the protocol (not JSON, missing fields, logprobs that do not match the tokens, token
ids outside the model's vocabulary), and if one finally fails the whole call raises, naming the
server, the request and what was wrong, so the loop never sees a half-filled or garbage group. A
server that accepts a request and never answers is given up on after `timeout_s`, not retried.

Weight updates are driven by the student's one `ServerSync` (rollout/sync/servers.py), which
`policy_engine` gives to a student of one server (`sync`) or to the pool of several: the tensor
gathering and the broadcast run on the caller's thread, the matching HTTP calls on this engine's
loop (`call`). A sync that breaks part-way marks the engine unusable until a later sync succeeds:
the server may hold a mix of old and new weights.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import httpx
import torch

from megatron_zppo.errors import RunError
from megatron_zppo.rollout.engine import MEMORY_TAGS, EngineStats, Generation, GenerateRequest, SamplingParams

if TYPE_CHECKING:  # the sync drives this engine, so its module imports this one
    from megatron_zppo.rollout.sync.servers import ServerSync


class SGLangError(RunError, RuntimeError):
    """The server could not be reached, refused a request, or answered outside the protocol."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of a refusal, when there was one


class MalformedResponse(SGLangError):
    """An answer outside the protocol."""


class GenerationAborted(MalformedResponse):
    """An abort this client did not ask for (a pause or update that aborts): never trained as ended."""


class WeightSyncError(SGLangError):
    """A weight update failed; the server may hold a mix of weights."""


_FINISH_TYPES = {"stop": "stop", "length": "length", "abort": "abort"}


class _LoopThread:
    """A private event loop so the synchronous facade works even when the caller has its own loop."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"sglang-{name}", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine) -> Any:
        return self.submit(coro).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def sampling_payload(params: SamplingParams, n: int) -> dict[str, Any]:
    payload: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
                               "top_p": params.top_p, "presence_penalty": params.presence_penalty, "n": n}
    if params.top_k > 0:  # SGLang's own default (-1) already means "off"
        payload["top_k"] = params.top_k
    if params.stop_token_ids:
        payload["stop_token_ids"] = list(params.stop_token_ids)
    if params.seed is not None:
        payload["sampling_seed"] = params.seed
    return payload


def image_payload(images: Sequence[str | bytes], mime: str = "image") -> str | list[str]:
    """Paths/URLs/data-URIs pass through; raw bytes become a base64 data URI (SGLang decodes those)."""
    encoded = [img if isinstance(img, str) else f"data:{mime};base64," + base64.b64encode(img).decode("ascii")
               for img in images]
    return encoded[0] if len(encoded) == 1 else encoded  # a list on a single request = several images


def video_payload(videos: Sequence[str | bytes]) -> str | list[str]:
    """`video_data`: the forms images take (SGLang samples the frames itself, by its own fps rule)."""
    return image_payload(videos, "video/mp4")


def response_json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:  # JSONDecodeError, or bytes that are not text at all
        raise MalformedResponse(f"answer is not JSON (HTTP {resp.status_code}, content-type "
                                f"{resp.headers.get('content-type', '?')!r}, body starts {resp.text[:120]!r})") from None


def parse_generation(item: dict, max_new_tokens: int, where: str, vocab_size: int | None = None) -> Generation:
    try:
        meta = item["meta_info"]
        ids = [int(t) for t in item["output_ids"]]
        entries = meta.get("output_token_logprobs") or []
        finish = meta["finish_reason"]
    except (KeyError, TypeError, ValueError) as err:
        raise MalformedResponse(f"{where}: missing or bad field in generation ({err!r})") from err
    if len(entries) != len(ids):
        raise MalformedResponse(f"{where}: {len(ids)} output tokens but {len(entries)} logprobs")
    if len(ids) > max_new_tokens:
        raise MalformedResponse(f"{where}: {len(ids)} output tokens exceed max_new_tokens={max_new_tokens}")
    outside = [(pos, t) for pos, t in enumerate(ids) if t < 0 or (vocab_size is not None and t >= vocab_size)]
    if outside:  # would reach the trainer's embedding as an IndexError; a server serving another model?
        pos, token = outside[0]
        raise MalformedResponse(f"{where}: output token {pos} has id {token}, outside the model's vocabulary "
                                f"[0, {vocab_size}) ({len(outside)} such token(s))")
    logprobs = _checked_logprobs(entries, ids, where)
    finish_type = finish.get("type") if isinstance(finish, dict) else None
    if finish_type not in _FINISH_TYPES:
        raise MalformedResponse(f"{where}: unknown finish_reason {finish!r}")
    return Generation(response_ids=ids, logprobs=logprobs, text=item.get("text") or "",
                      finish_reason=_FINISH_TYPES[finish_type], weight_version=str(meta.get("weight_version") or ""))


def _checked_logprobs(entries: list, ids: list[int], where: str, clipped_from: int | None = None) -> list[float]:
    """Each entry is [logprob, token_id, text|null]; a token-id mismatch means misaligned logprobs.
    `clipped_from`: SGLang reports input (scored) token ids >= vocab_size - 1 as 0 (it clips image-token
    hashes that way), so for scoring an entry id of 0 is accepted for those tokens (any, if the vocabulary
    is unknown); a misalignment still shows at every other position."""
    logprobs = []
    for pos, (entry, token) in enumerate(zip(entries, ids)):
        try:
            logprob, entry_token = float(entry[0]), int(entry[1])
        except (TypeError, ValueError, IndexError):
            logprob, entry_token = float("nan"), None
        if clipped_from is not None and entry_token == 0 and token >= clipped_from:
            entry_token = token
        if entry_token != token or not logprob <= 1e-3:  # NaN and positive "log-probs" are garbage too
            raise MalformedResponse(f"{where}: logprob entry {pos} is {entry!r} for token {token}")
        logprobs.append(logprob)
    return logprobs


class SGLangEngine:
    """One SGLang server (or a router in front of several, for generation only)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, admin_api_key: str | None = None,
                 max_concurrency: int = 64, timeout_s: float = 600.0, retries: int = 4, backoff_s: float = 0.5,
                 name: str = "student", weight_version: str = "", vocab_size: int | None = None):
        """`admin_api_key` (SGLang's --admin-api-key) guards weight/cache/abort endpoints; else `api_key`.
        `vocab_size`: the served model's; a generated token id outside [0, vocab_size) is malformed."""
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.vocab_size = vocab_size
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.weight_version = weight_version
        # partial_generations_lost: generations the server aborted, resubmitted from their prompt
        self.stats = EngineStats(extra={"http_retries": 0.0, "partial_generations_lost": 0.0})
        self._aborts = 0  # abort_all calls so far: a request that began before one wants its partial response
        self._api_key = api_key
        self._admin_key = admin_api_key or api_key
        self._broken_sync: str | None = None  # set while the server may hold mixed weights
        # The student's sync when this server is all of the student (sync.policy_engine); a pool's
        # servers are updated by the pool's, the teacher's by none.
        self.sync: ServerSync | None = None
        self._loop = _LoopThread(name)
        self._sem, self._client = self._loop.run(self._make_client(max_concurrency))

    async def _make_client(self, max_concurrency: int):
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        return asyncio.Semaphore(max_concurrency), httpx.AsyncClient(limits=limits, timeout=self.timeout_s)

    def _headers(self, admin: bool) -> dict[str, str]:
        key = self._admin_key if admin else self._api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _request(self, method: str, path: str, payload: dict | None = None, *, rid: str = "",
                       admin: bool = False, retry: bool = True, timeout: float | None = None,
                       parse: Callable[[httpx.Response], Any] | None = None) -> Any:
        """Retry transport errors, 5xx and answers `parse` finds malformed, with exponential back-off;
        returns `parse(response)` (or the response). 4xx is the caller's fault; no answer at all
        within the time limit is a stalled server, and waiting for it again would only double that."""
        url = self.base_url + path
        attempts = self.retries + 1 if retry else 1
        last, malformed = "", False
        for attempt in range(attempts):
            if attempt:
                self.stats.extra["http_retries"] += 1
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), 30.0))
            try:
                resp = await self._client.request(method, url, json=payload, headers=self._headers(admin),
                                                  timeout=timeout or self.timeout_s)
            except httpx.ReadTimeout:
                raise SGLangError(f"{self.name} server {url} did not answer request {rid!r} within "
                                  f"{timeout or self.timeout_s:g} s: it took the request and went silent "
                                  "(a hung or overloaded server?)") from None
            except httpx.TransportError as err:
                last, malformed = f"{type(err).__name__}: {err}", False
                continue
            if resp.status_code >= 500:  # 503 while starting, or a crashed worker behind a router
                last, malformed = f"HTTP {resp.status_code}: {resp.text[:300]}", False
                continue
            if resp.status_code >= 400:
                raise SGLangError(f"{self.name} server {url} rejected request {rid!r}: "
                                  f"HTTP {resp.status_code}: {resp.text[:500]}", resp.status_code)
            if parse is None:
                return resp
            try:
                return parse(resp)
            except GenerationAborted as err:  # nobody here asked for it: generate again, and count the loss
                self.stats.extra["partial_generations_lost"] += 1
                last, malformed = str(err), True
            except MalformedResponse as err:  # a proxy's error page, a server mid-restart, another model
                last, malformed = f"malformed answer: {err}", True
        raise (MalformedResponse if malformed else SGLangError)(
            f"{self.name} server {url} failed request {rid!r} after {attempts} attempt(s); last error: {last}")

    async def _admin(self, path: str, payload: dict | None = None, *, retry: bool = True) -> dict:
        """Admin endpoints answer {"success", "message"}; success=false is a failure even on 200."""
        resp = await self._request("POST", path, payload if payload is not None else {}, rid=path,
                                   admin=True, retry=retry)
        is_json = resp.headers.get("content-type", "").startswith("application/json")
        body = resp.json() if is_json and resp.content else {}  # some admin endpoints answer plain text
        if isinstance(body, dict) and body.get("success") is False:
            raise SGLangError(f"{self.name} server {self.base_url}{path} failed: {body.get('message')}")
        return body

    def generate(self, requests: Sequence[GenerateRequest], params: SamplingParams) -> list[list[Generation]]:
        self._check_usable()
        start = time.perf_counter()
        groups = self._loop.run(self._gather_all([self._generate_one(r, params) for r in requests]))
        self.stats.seconds_generating += time.perf_counter() - start
        self.stats.tokens_generated += sum(len(g.response_ids) for group in groups for g in group)
        return groups

    async def _gather_all(self, coros: list[Coroutine]) -> list:
        """All results or an exception: the first failure cancels the rest of the batch."""
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(c) for c in coros]
        except* Exception as group:
            raise group.exceptions[0] from None
        return [t.result() for t in tasks]

    async def _generate_one(self, req: GenerateRequest, params: SamplingParams) -> list[Generation]:
        rid, aborts = req.request_id or f"{self.name}-{uuid.uuid4().hex}", self._aborts
        params = params if req.max_new_tokens is None else dataclasses.replace(params, max_new_tokens=req.max_new_tokens)
        payload: dict[str, Any] = {"input_ids": [int(t) for t in req.prompt_ids], "rid": rid,
                                   "sampling_params": sampling_payload(params, req.n),
                                   "return_logprob": True, "logprob_start_len": -1}  # -1: output tokens only
        if req.images:
            payload["image_data"] = image_payload(req.images)
        if req.videos:
            payload["video_data"] = video_payload(req.videos)
        def parse(resp: httpx.Response) -> list[Generation]:
            items = response_json(resp)
            items = [items] if isinstance(items, dict) else items  # n > 1 answers with a list
            if not isinstance(items, list) or len(items) != req.n:
                raise MalformedResponse(f"expected {req.n} generation(s), got {type(items).__name__} "
                                        f"of length {len(items) if isinstance(items, list) else '?'}")
            gens = [parse_generation(item, params.max_new_tokens, f"generation {i}", self.vocab_size)
                    for i, item in enumerate(items)]
            aborted = [i for i, g in enumerate(gens) if g.finish_reason == "abort"]
            if aborted and aborts == self._aborts:
                raise GenerationAborted(f"the server aborted generation(s) {aborted} of request {rid!r} after "
                                        f"{sum(len(gens[i].response_ids) for i in aborted)} token(s)")
            return gens

        async with self._sem:
            return await self._request("POST", "/generate", payload, rid=rid, parse=parse)

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
              images: Sequence[tuple] | None = None) -> list[list[float]]:
        if images and any(images):
            # The server expands each placeholder to the image's tokens before logprob_start_len applies;
            # scoring with images is not built (nor checked against a real vision-language server).
            raise NotImplementedError(f"{self.name} engine: scoring with images is not supported on SGLang yet")
        self._check_usable()
        pairs = list(zip(prompt_ids, response_ids, strict=True))
        return self._loop.run(self._gather_all([self._score_one(list(p), list(r)) for p, r in pairs]))

    async def _score_one(self, prompt: list[int], response: list[int]) -> list[float]:
        if not prompt:
            raise ValueError("score() needs a non-empty prompt: the first position has no logprob")
        if not response:
            return []
        rid = f"{self.name}-score-{uuid.uuid4().hex}"
        # Start one position early: SGLang's first returned entry is always null, so it is dropped.
        payload = {"input_ids": [int(t) for t in prompt + response], "rid": rid, "return_logprob": True,
                   "sampling_params": {"max_new_tokens": 0}, "logprob_start_len": len(prompt) - 1}
        def parse(resp: httpx.Response) -> list[float]:
            try:
                entries = response_json(resp)["meta_info"]["input_token_logprobs"][1:]
            except (KeyError, TypeError, IndexError) as err:
                raise MalformedResponse(f"no input_token_logprobs ({err!r})") from err
            if len(entries) != len(response):
                raise MalformedResponse(f"{len(response)} response tokens but {len(entries)} logprobs")
            clipped_from = self.vocab_size - 1 if self.vocab_size else 1
            return _checked_logprobs(entries, [int(t) for t in response], "scoring", clipped_from)

        async with self._sem:
            return await self._request("POST", "/generate", payload, rid=rid, parse=parse)

    def health(self, timeout_s: float | None = None) -> bool:
        try:
            resp = self._loop.run(self._client.get(self.base_url + "/health_generate", headers=self._headers(False),
                                                   timeout=timeout_s or min(self.timeout_s, 30.0)))
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def abort_all(self) -> None:
        """Abort every request on the server (a student's serves this run only; SGLang 0.5.23 gives each
        sample of an n > 1 request an id of its own, so an abort by id would miss them); the partial
        responses come back (finish_reason "abort") as asked, not as a loss."""
        self._aborts += 1
        self._loop.run(self._admin("/abort_request", {"abort_all": True}))

    def flush_cache(self, *, attempts: int = 20) -> None:
        """The server answers 400 while requests are running; wait for them, then fail loudly."""
        for attempt in range(attempts):
            try:
                self._loop.run(self._admin("/flush_cache"))
                return
            except SGLangError as err:
                if err.status != 400 or attempt == attempts - 1:
                    raise
            time.sleep(min(self.backoff_s * 2**attempt, 5.0))

    def pause(self, mode: str = "abort") -> None:
        self._loop.run(self._admin("/pause_generation", {"mode": mode}))

    def resume(self) -> None:
        self._loop.run(self._admin("/continue_generation"))

    def release_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        """Co-located server (started with --enable-memory-saver): hand its GPU memory for `tags` to
        the trainer until `resume_memory`. No request may run meanwhile."""
        self._loop.run(self._admin("/release_memory_occupation", {"tags": list(tags)}))

    def resume_memory(self, tags: Sequence[str] = MEMORY_TAGS) -> None:
        self._loop.run(self._admin("/resume_memory_occupation", {"tags": list(tags)}))

    def server_weight_version(self) -> str:
        return str(self._loop.run(self._request("GET", "/model_info", rid="model_info")).json().get("weight_version", ""))

    def _check_usable(self) -> None:
        if self._broken_sync:
            raise WeightSyncError(self._broken_sync)

    def shutdown(self) -> None:
        """Closes this client (the servers belong to the launcher). Safe to call twice."""
        if self._loop.loop.is_closed():
            return
        if self.sync is not None:
            self.sync.shutdown()  # leaves its process group while this client can still tell the server
        self._loop.run(self._client.aclose())
        self._loop.close()

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: str) -> None:
        """pause -> flush -> send -> verify -> resume, by the student's sync (rollout/sync/servers.py);
        any failure leaves a precise error behind."""
        if self.sync is None:
            raise WeightSyncError(f"{self.name} server {self.base_url} has no weight sync of its own: a pool's "
                                  "servers are updated through the pool, a teacher's never")
        self.sync.update(named_tensors, version)

    def sync_metrics(self) -> dict[str, float]:
        return self.sync.metrics() if self.sync is not None else {}

    # ---- what a weight sync (one engine's, or a pool's over many engines) drives on this server ----
    def call(self, path: str, payload: dict | None = None) -> Future:
        """An admin POST, not retried (weight-update calls are not idempotent), running on this
        engine's loop while the caller does other work (a broadcast, calls to other servers)."""
        return self._loop.submit(self._admin(path, payload, retry=False))

    def mark_synced(self, version: str, seconds: float) -> None:
        self.weight_version, self._broken_sync = version, None
        self.stats.seconds_syncing += seconds

    def mark_broken(self, message: str) -> None:
        """The server may hold a mix of weights: refuse to generate until a sync succeeds."""
        self._broken_sync = message
