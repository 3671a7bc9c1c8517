"""Start the student (optionally several, behind an sglang-router) and teacher SGLang servers.

SGLang cannot share the trainer's Python environment (it pins another transformers: requirements-sglang.txt), so every server
runs as `<--python> -m sglang.launch_server ...` from its own environment. The launcher waits for
each server's `/health_generate`, writes `{"student": [urls], "student_router": url|null,
"teacher": url|null}` where the trainer reads it, and stops every server on SIGINT/SIGTERM. A server
that exits later stops them all, or with `--restart N` is started again (up to N times each).

    python tools/launch_sglang.py --python /envs/sglang/bin/python --student-model Qwen/Qwen3-4B \
        --teacher-model Qwen/Qwen3-32B --num-students 3 --router --student-gpus 0,1,2 \
        --teacher-gpus 6,7 --teacher-tp 2 --teacher-quantization fp8 --addresses-out run/sglang.json

`--dry-run` prints the resolved plan as JSON (keys redacted) and starts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SECRET_FLAGS = ("--api-key", "--admin-api-key")


@dataclass(frozen=True)
class LaunchConfig:
    python: str
    student_model: str
    teacher_model: str | None = None
    num_students: int = 1
    student_tp: int = 1
    teacher_tp: int = 1
    student_gpus: tuple[int, ...] | None = None  # None: the first free ids, students first
    teacher_gpus: tuple[int, ...] | None = None
    device: str = "cuda"  # "cuda" | "cpu"
    host: str = "127.0.0.1"
    advertise_host: str | None = None  # what URLs in the addresses file use; defaults to host
    base_port: int = 30000  # students take base_port.., then the teacher, then the router
    router: bool = False
    router_port: int | None = None
    mem_fraction_static: float = 0.8
    max_total_tokens: int | None = None  # required on CPU: the KV pool otherwise takes ~15 GB
    teacher_quantization: str | None = None  # "fp8"
    api_key: str | None = None
    admin_api_key: str | None = None
    cpu_kernel_shim: str | None = None  # dir with the stand-in `sgl_kernel`, first on PYTHONPATH
    extra_server_args: tuple[str, ...] = ()


def _check(cfg: LaunchConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    need(cfg.num_students >= 1, f"--num-students must be >= 1, got {cfg.num_students}")
    need(cfg.student_tp >= 1 and cfg.teacher_tp >= 1, "--student-tp and --teacher-tp must be >= 1")
    need(cfg.device in ("cuda", "cpu"), f"--device must be cuda or cpu, got {cfg.device!r}")
    need(0 < cfg.mem_fraction_static < 1, f"--mem-fraction-static must be in (0, 1), got {cfg.mem_fraction_static}")
    need(cfg.teacher_quantization in (None, "fp8"),
         f"--teacher-quantization must be fp8, got {cfg.teacher_quantization!r}")
    need(cfg.teacher_model is not None or cfg.teacher_gpus is None, "--teacher-gpus given without --teacher-model")
    if cfg.device == "cpu":
        need(cfg.student_gpus is None and cfg.teacher_gpus is None, "GPU ids make no sense with --device cpu")
        need(cfg.max_total_tokens is not None, "--max-total-tokens is required with --device cpu")
        need(cfg.teacher_quantization is None, "fp8 quantization needs a GPU")


def _gpu_slices(cfg: LaunchConfig) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """Per-student GPU ids and the teacher's, validated against each other."""
    n_student = cfg.num_students * cfg.student_tp
    n_teacher = cfg.teacher_tp if cfg.teacher_model else 0
    students = cfg.student_gpus if cfg.student_gpus is not None else tuple(range(n_student))
    teacher = cfg.teacher_gpus
    if teacher is None:
        start = max(students, default=-1) + 1
        teacher = tuple(range(start, start + n_teacher))
    if len(students) != n_student:
        raise ValueError(f"--student-gpus lists {len(students)} ids but {cfg.num_students} student(s) x "
                         f"tp {cfg.student_tp} need {n_student}")
    if len(teacher) != n_teacher:
        raise ValueError(f"--teacher-gpus lists {len(teacher)} ids but teacher tp {cfg.teacher_tp} needs {n_teacher}")
    every = list(students) + list(teacher)
    if len(set(every)) != len(every) or min(every, default=0) < 0:
        raise ValueError(f"GPU ids must be distinct and >= 0, got students {students} and teacher {teacher}")
    per_student = [tuple(students[i * cfg.student_tp:(i + 1) * cfg.student_tp]) for i in range(cfg.num_students)]
    return per_student, tuple(teacher)


def _server(cfg: LaunchConfig, name: str, model: str, port: int, gpus: tuple[int, ...], tp: int,
            quantization: str | None) -> dict:
    cmd = [cfg.python, "-m", "sglang.launch_server", "--model-path", model, "--host", cfg.host,
           "--port", str(port), "--tp-size", str(tp)]
    env: dict[str, str] = {}
    if cfg.device == "cpu":
        # Without SGLANG_USE_CPU_ENGINE start-up imports vLLM's CUDA rotary op and fails.
        cmd += ["--device", "cpu", "--max-total-tokens", str(cfg.max_total_tokens), "--disable-overlap-schedule"]
        env["SGLANG_USE_CPU_ENGINE"] = "1"
        if cfg.cpu_kernel_shim:
            env["PYTHONPATH"] = cfg.cpu_kernel_shim
    else:
        cmd += ["--mem-fraction-static", str(cfg.mem_fraction_static)]
        if cfg.max_total_tokens is not None:
            cmd += ["--max-total-tokens", str(cfg.max_total_tokens)]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    if quantization:
        cmd += ["--quantization", quantization]
    if cfg.api_key:
        cmd += ["--api-key", cfg.api_key]
    if cfg.admin_api_key:
        cmd += ["--admin-api-key", cfg.admin_api_key]
    cmd += list(cfg.extra_server_args)
    url = f"http://{cfg.advertise_host or cfg.host}:{port}"
    return {"name": name, "cmd": cmd, "env": env, "port": port, "gpus": list(gpus), "url": url,
            "health_path": "/health_generate"}


def build_plan(cfg: LaunchConfig) -> dict:
    """Pure: the processes to start and the addresses file to write. Raises ValueError on bad input."""
    _check(cfg)
    student_gpus, teacher_gpus = _gpu_slices(cfg)
    processes = [
        _server(cfg, f"student{i}", cfg.student_model, cfg.base_port + i, gpus, cfg.student_tp, None)
        for i, gpus in enumerate(student_gpus)
    ]
    if cfg.teacher_model:
        processes.append(_server(cfg, "teacher", cfg.teacher_model, cfg.base_port + cfg.num_students,
                                 teacher_gpus, cfg.teacher_tp, cfg.teacher_quantization))
    students = [p["url"] for p in processes if p["name"].startswith("student")]
    router_url = None
    if cfg.router:
        port = cfg.router_port if cfg.router_port is not None else cfg.base_port + cfg.num_students + 1
        router_url = f"http://{cfg.advertise_host or cfg.host}:{port}"
        # The router reaches workers on the bind host, which is local to it.
        workers = [f"http://{cfg.host}:{p['port']}" for p in processes if p["name"].startswith("student")]
        processes.append({"name": "student_router", "port": port, "gpus": [], "env": {}, "url": router_url,
                          "health_path": "/health",
                          "cmd": [cfg.python, "-m", "sglang_router.launch_router", "--host", cfg.host,
                                  "--port", str(port), "--worker-urls", *workers, "--policy", "round_robin"]})
    ports = [p["port"] for p in processes]
    if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
        raise ValueError(f"ports must be distinct and in 1..65535, got {ports}")
    teacher_url = processes[cfg.num_students]["url"] if cfg.teacher_model else None
    return {"processes": processes,
            "addresses": {"student": students, "student_router": router_url, "teacher": teacher_url}}


def redacted(plan: dict) -> dict:
    """The plan with API keys hidden, for printing and logs."""
    out = json.loads(json.dumps(plan))
    for proc in out["processes"]:
        cmd = proc["cmd"]
        for i, arg in enumerate(cmd[:-1]):
            if arg in SECRET_FLAGS:
                cmd[i + 1] = "***"
    return out


def _healthy(url: str, api_key: str | None, timeout_s: float = 10.0) -> bool:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Launcher:
    """Owns the server processes: start, wait healthy, stop (each in its own process group)."""

    def __init__(self, plan: dict, log_dir: Path, api_key: str | None = None):
        self.plan = plan
        self.log_dir = log_dir
        self.api_key = api_key  # kept out of the plan so printed plans never carry it
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}  # by server name: how often it was started again

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.plan["processes"]:
            self._start(spec)

    def _start(self, spec: dict) -> None:
        env = {**os.environ, **spec["env"]}
        if "PYTHONPATH" in spec["env"] and os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = spec["env"]["PYTHONPATH"] + os.pathsep + os.environ["PYTHONPATH"]
        log = open(self.log_dir / f"{spec['name']}.log", "ab")
        # A new session per server lets stop() signal the server and every child it forked.
        self.procs[spec["name"]] = subprocess.Popen(spec["cmd"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)
        log.close()

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = {spec["name"]: spec["url"] + spec["health_path"] for spec in self.plan["processes"]}
        while pending:
            self.check_alive()
            for name, url in list(pending.items()):
                if _healthy(url, self.api_key):
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout_s:.0f} s: {sorted(pending)} (logs in {self.log_dir})")
            time.sleep(1.0 if pending else 0)

    def check_alive(self, restarts: int = 0) -> None:
        """A server that exited is started again (same command, same port), up to `restarts` times
        each; the trainer's pool notices it answering again (student.fault_tolerance) and gives it
        the current weights before it serves. Past that, or with 0, it takes the rest down."""
        for spec in self.plan["processes"]:
            name, proc = spec["name"], self.procs[spec["name"]]
            if proc.poll() is None:
                continue
            done = self.restarts.get(name, 0)
            if done >= restarts:
                again = f" (restarted {done} time(s) already)" if done else ""
                raise RuntimeError(f"{name} exited with code {proc.returncode}{again}; see "
                                   f"{self.log_dir / (name + '.log')}")
            self.restarts[name] = done + 1
            print(f"launch_sglang: {name} exited with code {proc.returncode}; starting it again "
                  f"({done + 1} of {restarts})", flush=True)
            self._start(spec)

    def stop(self, grace_s: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def write_addresses(addresses: dict, path: Path) -> None:
    """Atomic, so a trainer polling for the file never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(addresses, indent=2) + "\n")
    os.replace(tmp, path)


def _ids(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> tuple[LaunchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", required=True, help="Python executable of the SGLang environment")
    p.add_argument("--student-model", required=True)
    p.add_argument("--teacher-model")
    p.add_argument("--num-students", type=int, default=1)
    p.add_argument("--student-tp", type=int, default=1)
    p.add_argument("--teacher-tp", type=int, default=1)
    p.add_argument("--student-gpus", help="comma-separated ids, num_students x student_tp of them")
    p.add_argument("--teacher-gpus", help="comma-separated ids, teacher_tp of them")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--advertise-host", help="host written into the addresses file (default: --host)")
    p.add_argument("--port", type=int, default=30000, help="first port; servers take consecutive ones")
    p.add_argument("--router", action="store_true", help="put an sglang-router in front of the students")
    p.add_argument("--router-port", type=int)
    p.add_argument("--mem-fraction-static", type=float, default=0.8)
    p.add_argument("--max-total-tokens", type=int)
    p.add_argument("--teacher-quantization", choices=["fp8"])
    p.add_argument("--api-key")
    p.add_argument("--admin-api-key")
    p.add_argument("--cpu-kernel-shim", help="dir holding the CPU stand-in sgl_kernel (CPU only)")
    p.add_argument("--server-arg", action="append", default=[], help="extra flag passed to every server, repeatable")
    p.add_argument("--addresses-out", default="sglang_addresses.json")
    p.add_argument("--log-dir", default="sglang_logs")
    p.add_argument("--health-timeout-s", type=float, default=900.0)
    p.add_argument("--restart", type=int, default=0, metavar="N",
                   help="start a server that exits again, up to N times each (0: it stops every server)")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    cfg = LaunchConfig(
        python=a.python, student_model=a.student_model, teacher_model=a.teacher_model, num_students=a.num_students,
        student_tp=a.student_tp, teacher_tp=a.teacher_tp, student_gpus=_ids(a.student_gpus),
        teacher_gpus=_ids(a.teacher_gpus), device=a.device, host=a.host, advertise_host=a.advertise_host,
        base_port=a.port, router=a.router, router_port=a.router_port, mem_fraction_static=a.mem_fraction_static,
        max_total_tokens=a.max_total_tokens, teacher_quantization=a.teacher_quantization, api_key=a.api_key,
        admin_api_key=a.admin_api_key, cpu_kernel_shim=a.cpu_kernel_shim, extra_server_args=tuple(a.server_arg))
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    try:
        plan = build_plan(cfg)
    except ValueError as err:
        print(f"launch_sglang: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(redacted(plan), indent=2))
        return 0
    launcher = Launcher(plan, Path(args.log_dir), cfg.api_key)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        launcher.start()
        launcher.wait_healthy(args.health_timeout_s)
        write_addresses(plan["addresses"], Path(args.addresses_out))
        print(f"launch_sglang: healthy; addresses in {args.addresses_out}", flush=True)
        while True:  # serve until signalled; a dead server is restarted, or takes the rest down with it
            launcher.check_alive(args.restart)
            time.sleep(2.0)
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as err:
        print(f"launch_sglang: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not interrupt the shutdown
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        launcher.stop()


if __name__ == "__main__":
    sys.exit(main())
