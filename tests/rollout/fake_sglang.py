"""A stand-in SGLang 0.5.23 server speaking the same JSON, for tests without SGLang or a GPU.

It runs in its own spawned process, like the real server, so a test can kill it mid-batch and so
its gloo process group for weight updates is a real second rank, not a mock. Generations are
deterministic functions of the request (see `fake_token`/`fake_logprob`), so tests can predict
them exactly. Faults are scripted at run time through `POST /_fake/faults`.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

VOCAB = 1000
DEFAULT_LEN = 6  # tokens generated when max_new_tokens does not cut earlier
EOS = 999
# Bounds the fake's rendezvous and every collective on its group; generous because its first
# /init_weights_update_group also imports torch, which on a loaded 2-core machine takes a while.
GROUP_TIMEOUT_S = 60


def fake_token(prompt: list[int], sample: int, pos: int) -> int:
    return (sum(prompt) + 7 * pos + 13 * sample) % (VOCAB - 1)  # never EOS by accident


def fake_logprob(position: int, token: int) -> float:
    """Log-prob the fake gives `token` at absolute `position` (prompt or output alike)."""
    return -((token * 31 + position) % 97) / 10.0 - 0.01


class _State:
    def __init__(self, api_key, admin_api_key, starting_s):
        self.api_key, self.admin_api_key = api_key, admin_api_key
        self.ready_at = time.monotonic() + starting_s
        self.faults: dict = {}
        self.log: list[str] = []
        self.generate_count = 0
        self.last_generate: dict = {}
        self.update_count = 0
        self.in_flight = 0
        self.busy_s, self.busy_since = 0.0, 0.0  # time with a generate request in flight (benchmarks)
        self.aborted: set[str] = set()
        self.tokenizers: dict = {}  # the `tokenizer` fault's, loaded once
        self.plans: dict[tuple, tuple] = {}  # prompt + partial response of an aborted generation -> its plan
        self.generating: set[str] = set()  # rids of the generations running now
        self.progress: dict[str, int] = {}  # of those, the tokens each has made so far
        self.update_aborted: set[str] = set()  # of those, the ones an update aborted (once: a resubmission runs)
        self.update_aborts: list = []  # each weight-update request's abort_all_requests, as sent (None: unsaid)
        self.weight_version = "default"
        self.weights: dict = {}  # name -> torch tensor
        self.group = None
        self.group_args: dict = {}  # the last /init_weights_update_group body (rank_offset, world_size, ...)
        self.loaded_from: list[str] = []  # model_path of every /update_weights_from_disk
        self.released: set[str] = set()  # memory-saver tags whose GPU memory is handed back
        self.lock = threading.Lock()

    def fault_budget(self, key: str) -> bool:
        """Consume one use of a counted fault ("<key>": n)."""
        with self.lock:
            if self.faults.get(key, 0) > 0:
                self.faults[key] -= 1
                return True
        return False


ADMIN = {"/flush_cache", "/abort_request", "/pause_generation", "/continue_generation", "/init_weights_update_group",
         "/begin_weight_update", "/end_weight_update", "/update_weights_from_distributed",
         "/update_weights_from_disk", "/destroy_weights_update_group", "/release_memory_occupation",
         "/resume_memory_occupation"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self, path: str) -> bool:
        st = self.state
        key = (st.admin_api_key or st.api_key) if path in ADMIN else st.api_key
        return key is None or self.headers.get("Authorization") == f"Bearer {key}"

    def do_GET(self):
        self._dispatch(None)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self._dispatch(json.loads(self.rfile.read(length) or b"{}"))

    def _dispatch(self, body):
        st, path = self.state, self.path.split("?")[0]
        if not path.startswith("/_fake/"):
            st.log.append(path)
            if not self._authorised(path):
                return self._send(401, {"error": "Unauthorized"})
            if time.monotonic() < st.ready_at:
                return self._send(503, {"error": "server is starting"})
        handler = getattr(self, "h_" + path.strip("/").replace("/", "_"), None)
        if handler is None:
            return self._send(404, {"detail": "Not Found"})
        handler(body)

    # ---- test control ----
    def h__fake_faults(self, body):
        with self.state.lock:
            self.state.faults.update(body)
        self._send(200, {"faults": self.state.faults})

    def h__fake_log(self, body):
        self._send(200, {"log": self.state.log, "last_generate": self.state.last_generate,
                         "generating": sorted(self.state.generating), "update_aborts": self.state.update_aborts,
                         "progress": dict(self.state.progress)})

    def h__fake_version(self, body):
        self._send(200, {"weight_version": self.state.weight_version})

    def h__fake_busy(self, body):
        st = self.state
        with st.lock:
            busy = st.busy_s + (time.monotonic() - st.busy_since if st.in_flight else 0.0)
        self._send(200, {"busy_s": busy})

    def h__fake_group(self, body):
        self._send(200, {"group": self.state.group_args, "loaded_from": self.state.loaded_from})

    def h__fake_weights(self, body):
        self._send(200, {name: tensor_digest(t) for name, t in self.state.weights.items()})

    # ---- inference ----
    def h_health_generate(self, body):
        self._send(200, "")

    def h_health(self, body):  # what sglang-router answers; lets this fake stand in for it too
        self._send(200, "")

    def h_model_info(self, body):
        self._send(200, {"model_path": "fake", "weight_version": self.state.weight_version,
                         "is_generation": True})

    def h_release_memory_occupation(self, body):
        self.state.released |= set(body.get("tags") or ("weights", "kv_cache", "cuda_graph"))
        self._send(200, None)

    def h_resume_memory_occupation(self, body):
        tags = set(body.get("tags") or ("weights", "kv_cache", "cuda_graph"))
        if tags - self.state.released:  # SGLang 0.5 fails on it too (KeyError in its weight updater)
            return self._send(500, {"error": f"resume of memory never released: {sorted(tags - self.state.released)}"})
        self.state.released -= tags
        self._send(200, None)

    def h__fake_memory(self, body):
        self._send(200, {"released": sorted(self.state.released)})

    def h_generate(self, body):
        st = self.state
        if st.released & {"weights", "kv_cache"}:  # a real server would crash or serve garbage
            return self._send(400, {"error": f"memory released: {sorted(st.released)}"})
        with st.lock:
            st.generate_count += 1
            count = st.generate_count
            st.last_generate = body
        if count > st.faults.get("die_after_generates", 1 << 30):
            os._exit(1)  # like a crashed server: the connection drops without an answer
        if st.fault_budget("drop_connections"):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if st.fault_budget("status_503"):
            return self._send(503, {"error": "overloaded"})
        if st.fault_budget("stall"):  # takes the request, never answers
            time.sleep(3600)
            return
        if st.fault_budget("garbage_body"):  # e.g. a proxy's error page with status 200
            return self._send(200, "<html><body>upstream connect error</body></html>")
        bad = _bad_media(body.get("video_data"))
        if bad:  # what SGLang answers for a video it cannot load
            return self._send(400, {"error": f"Could not decode video: {bad}"})
        with st.lock:
            st.in_flight += 1
            if st.in_flight == 1:
                st.busy_since = time.monotonic()
        try:
            items = self._generations(body)
        finally:
            with st.lock:
                st.in_flight -= 1
                if st.in_flight == 0:
                    st.busy_s += time.monotonic() - st.busy_since
        if items[0]["output_ids"] and st.fault_budget("out_of_vocab"):  # consistent logprobs, foreign id
            items[0]["output_ids"][0] = VOCAB + 5
            items[0]["meta_info"]["output_token_logprobs"][0][1] = VOCAB + 5
        if st.fault_budget("missing_meta"):
            del items[0]["meta_info"]
        n = body.get("sampling_params", {}).get("n", 1)
        self._send(200, items if n > 1 else items[0])

    def _generations(self, body):
        sp, prompt, rid = body.get("sampling_params", {}), body["input_ids"], body.get("rid", "")
        max_new, n = sp.get("max_new_tokens", 128), sp.get("n", 1)
        if max_new == 0:
            return [self._score(prompt, body.get("logprob_start_len", -1), rid)]
        def one(s):
            return self._one(prompt, s, max_new, sp.get("stop_token_ids") or [], f"{rid}_{s}" if n > 1 else rid, n)
        if n > 1 and self.state.faults.get("token_delay_s"):  # a real server decodes a request's samples at once
            with ThreadPoolExecutor(n) as pool:
                return list(pool.map(one, range(n)))
        return [one(s) for s in range(n)]

    def _plan(self, prompt, sample, n):
        """(the prompt the tokens are a function of, the sample, the position to go on from, the
        length planned). With `lengths` set, a request continuing a generation this server aborted
        (prompt = its prompt + the tokens it had made; n = 1) goes on with that generation's plan, and
        a request's samples are all alike (one aborted before its first token goes on as a new one):
        an abort and a continuation then make exactly the tokens an uncut generation makes."""
        st = self.state
        lengths = st.faults.get("lengths")  # {"median", "sigma", "cap"}: log-normal, a function of the prompt
        if lengths is None:
            return prompt, sample, 0, DEFAULT_LEN
        with st.lock:
            plan = st.plans.get(tuple(prompt)) if n == 1 else None
        if plan is not None:
            return plan
        rng = random.Random(hashlib.sha256(repr(prompt).encode()).digest())
        drawn = round(math.exp(math.log(lengths["median"]) + lengths["sigma"] * rng.gauss(0, 1)))
        return prompt, 0, 0, max(1, min(lengths["cap"], drawn))

    def _one(self, prompt, sample, max_new, stop_ids, rid, n=1):
        st, ids, finish = self.state, [], None
        abort_at = 2 if st.fault_budget("abort_generations") else None  # as a pause in "abort" mode would
        hold = st.fault_budget("hold_until_update")  # still running when the next update request arrives
        source, sample, start, length = self._plan(prompt, sample, n)
        with st.lock:
            st.generating.add(rid)
        for pos in range(start, start + min(max_new, length - start) + st.faults.get("overlong", 0)):
            time.sleep(st.faults.get("token_delay_s", 0))
            if rid in st.update_aborted:
                with st.lock:
                    st.update_aborted.discard(rid)
                finish = {"type": "abort", "message": "Abort request"}
                break
            if pos - start == abort_at or any(rid.startswith(a) for a in st.aborted):
                finish = {"type": "abort", "message": "Abort request"}
                break
            ids.append(fake_token(source, sample, pos))
            st.progress[rid] = len(ids)
            if ids[-1] in stop_ids:
                finish = {"type": "stop", "matched": ids[-1]}
                break
        if finish is not None and finish["type"] == "abort" and ids and st.faults.get("lengths"):
            with st.lock:
                st.plans[tuple(prompt) + tuple(ids)] = (source, sample, start + len(ids), length)
        if finish is None:
            full = len(ids) >= max_new
            finish = {"type": "length", "length": len(ids)} if full else {"type": "stop", "matched": EOS}
        with st.lock:
            st.generating.discard(rid)
            st.progress.pop(rid, None)
        lps = [[fake_logprob(len(prompt) + i, t), t, None] for i, t in enumerate(ids)]
        if st.faults.get("short_logprobs"):
            lps = lps[:-1]
        meta = {"id": rid, "finish_reason": finish, "prompt_tokens": len(prompt), "completion_tokens": len(ids),
                "cached_tokens": 0, "weight_version": st.weight_version, "output_token_logprobs": lps,
                "input_token_logprobs": [], "e2e_latency": 0.001}
        return {"text": self._text(ids), "output_ids": ids, "meta_info": meta}

    def _text(self, ids):
        """`t<id>` per token; with the fault `tokenizer` (a model directory) that tokenizer's decoding,
        as a real server's detokenizer gives it (then a response's text is the same whether one
        request made it or an aborted one and its continuation did, decoded again by the client)."""
        path = self.state.faults.get("tokenizer")
        if path is None:
            return " ".join(f"t{t}" for t in ids)
        with self.state.lock:
            if path not in self.state.tokenizers:
                from transformers import AutoTokenizer

                self.state.tokenizers[path] = AutoTokenizer.from_pretrained(path)
        return self.state.tokenizers[path].decode(ids, skip_special_tokens=True)

    def _score(self, ids, start, rid):
        start = max(start, 0)
        entries = [[None if pos == start else fake_logprob(pos, ids[pos]), ids[pos] if ids[pos] < VOCAB - 1 else 0, None]
                   for pos in range(start, len(ids))]  # first entry always null; ids >= VOCAB - 1 reported as 0
        meta = {"id": rid, "finish_reason": {"type": "length", "length": 0}, "prompt_tokens": len(ids),
                "completion_tokens": 0, "weight_version": self.state.weight_version,
                "input_token_logprobs": entries, "output_token_logprobs": []}
        return {"text": "", "output_ids": [], "meta_info": meta}

    # ---- admin ----
    def h_abort_request(self, body):
        with self.state.lock:
            if body.get("abort_all"):
                self.state.aborted |= self.state.generating
            else:
                self.state.aborted.add(body["rid"])
        self._send(200, "")

    def h_flush_cache(self, body):
        if self.state.in_flight or self.state.fault_budget("busy_flushes"):
            return self._send(400, "Cache not flushed. Please check backend logs or retry when no requests run.")
        self._send(200, "Cache flushed.\nPlease check backend logs for more details.")

    def h_pause_generation(self, body):
        self._send(200, {"message": "Generation paused."})

    def h_continue_generation(self, body):
        self._send(200, {"message": "Generation continued."})

    def h_init_weights_update_group(self, body):
        from megatron_zppo.rollout.sync import groups  # torch import only where a test needs it

        if self.state.group is not None and self.state.group_args.get("group_name") == body["group_name"]:
            # SGLang keeps a group until it is destroyed, and torch refuses a second one of that name.
            return self._send(400, {"success": False, "message": "Failed to initialize custom process group: "
                                    "The specified group name has already been used."})
        self.state.group = groups.init_custom_process_group(
            backend=body["backend"], init_method=f"tcp://{body['master_address']}:{body['master_port']}",
            world_size=body["world_size"], rank=body["rank_offset"], group_name=body["group_name"],
            timeout_s=GROUP_TIMEOUT_S)
        self.state.group_args = body
        self._send(200, {"success": True, "message": "Succeeded to initialize custom process group."})

    def h_destroy_weights_update_group(self, body):
        from megatron_zppo.rollout.sync import groups

        if self.state.group is not None:
            groups.destroy_custom_process_group(self.state.group)
            self.state.group = None
        self._send(200, {"success": True, "message": "destroyed"})

    def h_begin_weight_update(self, body):
        self._send(200, {"success": True, "message": "begun"})

    def h_end_weight_update(self, body):
        self._send(200, {"success": True, "message": "ended"})

    def _abort_unless_told_not_to(self, body):
        """An update aborts the generations running unless its request says abort_all_requests: false
        (SGLang's default differs between its update requests: only an explicit value is safe)."""
        with self.state.lock:
            if body.get("abort_all_requests", True):
                self.state.update_aborted |= self.state.generating
            self.state.update_aborts.append(body.get("abort_all_requests"))

    def h_update_weights_from_distributed(self, body):
        self._abort_unless_told_not_to(body)
        if "weights" in self.state.released:
            return self._send(400, {"success": False, "message": "weights are released"})
        import torch

        from megatron_zppo.rollout.sync import groups

        st = self.state
        st.update_count += 1
        if st.update_count - 1 == st.faults.get("die_at_update", -1):
            os._exit(1)
        st.weights.update(groups.receive_bucket(st.group, body, torch.device("cpu")))
        if st.update_count - 1 == st.faults.get("fail_at_update", -1):
            return self._send(400, {"success": False, "message": "fake: failed to load received weights"})
        if body.get("weight_version") is not None and not st.faults.get("stale_version"):
            st.weight_version = body["weight_version"]
        self._send(200, {"success": True, "message": "Succeeded to update parameter online."})

    def h_update_weights_from_disk(self, body):
        self._abort_unless_told_not_to(body)
        if "weights" in self.state.released:
            return self._send(400, {"success": False, "message": "weights are released"})
        from safetensors.torch import load_file

        files = sorted(Path(body["model_path"]).glob("*.safetensors"))
        if not files:
            return self._send(400, {"success": False, "message": f"no weights in {body['model_path']}",
                                    "num_paused_requests": 0})
        self.state.loaded_from.append(body["model_path"])
        for f in files:
            self.state.weights.update(load_file(str(f)))
        self.state.weight_version = body.get("weight_version") or self.state.weight_version
        self._send(200, {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0})


def _bad_media(data) -> str | None:
    """Why a `video_data` field is not one of SGLang's forms (a path, URL or data URI, or a list of
    them), or None. The fake decodes a data URI's base64 but not the video inside it."""
    import base64
    import binascii

    if data is None:
        return None
    for item in data if isinstance(data, list) else [data]:
        if not isinstance(item, str) or not item:
            return f"expected a path, URL or data URI string, got {type(item).__name__}"
        if item.startswith("data:"):
            try:
                base64.b64decode(item.split(",", 1)[1], validate=True)
            except (IndexError, binascii.Error) as e:
                return f"bad base64 data URI ({e})"
    return None


def tensor_digest(tensor) -> dict:
    """What `/_fake/weights` reports for a tensor: equal digests mean bit-identical tensors."""
    import torch

    raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
            "sha256": hashlib.sha256(raw).hexdigest()}


def _serve(port: int, config: dict, ready=None) -> None:
    handler = type("Handler", (_Handler,), {"state": _State(**config)})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    if ready is not None:
        ready.put(server.server_address[1])
    server.serve_forever()


def serve_forever(port: int) -> None:
    """Foreground entry point, for tests that start the fake as a plain subprocess."""
    _serve(port, {"api_key": None, "admin_api_key": None, "starting_s": 0.0})


class FakeSGLang:
    """Start with `with FakeSGLang() as server:`; `server.url` is its base URL."""

    def __init__(self, *, api_key=None, admin_api_key=None, starting_s: float = 0.0, port: int = 0):
        self.config = {"api_key": api_key, "admin_api_key": admin_api_key, "starting_s": starting_s}
        self.port = port
        self.process = None

    def start(self) -> FakeSGLang:
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(self.port, self.config, ready), daemon=True)
        self.process.start()
        self.port = ready.get(timeout=60)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(timeout=10)

    def restart(self) -> None:
        """Same port, fresh state (like a supervisor restarting a crashed server)."""
        self.kill()
        self.config["starting_s"] = 0.0
        self.start()

    def _control(self, path: str, body: dict | None = None) -> dict:
        return httpx.post(self.url + path, json=body or {}, timeout=10).json()

    def set_faults(self, **faults) -> None:
        self._control("/_fake/faults", faults)

    def log(self) -> list[str]:
        """Paths of every request the server received, in arrival order."""
        return self._control("/_fake/log")["log"]

    def released(self) -> list[str]:
        return self._control("/_fake/memory")["released"]

    def generating(self) -> list[str]:
        """Request ids of the generations running now."""
        return self._control("/_fake/log")["generating"]

    def tokens_in_flight(self) -> int:
        """Tokens made so far by the generations running now."""
        return sum(self._control("/_fake/log")["progress"].values())

    def update_aborts(self) -> list:
        """Each weight-update request's abort_all_requests as sent (None where it did not say)."""
        return self._control("/_fake/log")["update_aborts"]

    def last_generate(self) -> dict:
        return self._control("/_fake/log")["last_generate"]

    def weight_version(self) -> str:
        return self._control("/_fake/version")["weight_version"]

    def busy_s(self) -> float:
        """Seconds so far with at least one generate request in flight."""
        return self._control("/_fake/busy")["busy_s"]

    def weights(self) -> dict[str, dict]:
        return self._control("/_fake/weights")

    def group(self) -> dict:
        """The last /init_weights_update_group body this server handled ({} if none)."""
        return self._control("/_fake/group")["group"]

    def loaded_from(self) -> list[str]:
        return self._control("/_fake/group")["loaded_from"]

    def __enter__(self) -> FakeSGLang:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
