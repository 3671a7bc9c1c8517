"""Which process runs on which node, GPU and port for a multi-node ZPPO job (read by zppo.sbatch).

Per node (paper: 8 GPUs = 6 student + 2 teacher):

- the teacher: one SGLang server on the node's teacher GPUs (by default the last ``teacher_gpus``
  ids, tensor-parallel over all of them);
- the student's GPUs, shared in one of two ways:
  - ``split`` (default): the first ``train_gpus`` run Megatron training ranks, the rest run SGLang
    student engines (TP ``student_tp``). This is what the main job supports today: weights reach
    the engines over a process group or through disk, and nothing has to give memory back.
  - ``colocate``: every student GPU runs a training rank *and* a student engine started with
    ``--enable-memory-saver``. All 6 GPUs then work in both phases (what the paper's overlap
    suggests). The main job releases every engine's memory around the policy update
    (``student.release_memory``) and updates every engine from trainer rank 0; CUDA-IPC sync from
    the training rank that shares each GPU is not built, so the plan says so in ``caveats``.

Node 0 also runs two sglang-routers, one over every student engine and one over every teacher
server of the job. The trainer reaches the teacher through its router (``teacher.url``) and every
student engine directly (``student.urls``: an EnginePool that spreads requests over them). Weight
updates, which a router would not forward, reach all student engines at once: one process group
spans the trainer's sending rank and every engine's ranks (``weight_sync.fanout=one_group``, rank
offsets from ``student_tp``), so each bucket is broadcast once for the whole job.
Each node's servers are started by ``tools/launch_sglang.py``; its pure ``build_plan`` is reused
here, so the ports and URLs below are exactly the ones the launcher will use.

    python tools/slurm_plan.py --nodes 8 --dry-run            # the plan as JSON
    python tools/slurm_plan.py --hosts a,b --out plan.json    # write it (zppo.sbatch does this)
    python tools/slurm_plan.py --plan plan.json --get trainer.cuda_visible_devices
    python tools/slurm_plan.py --plan plan.json --exec-launch  # on node $SLURM_NODEID: run its launcher
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("launch_sglang", _HERE / "launch_sglang.py")
launch_sglang = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("launch_sglang", launch_sglang)  # its dataclasses resolve through sys.modules
_spec.loader.exec_module(launch_sglang)

MODES = ("split", "colocate")


class PlanError(ValueError):
    pass


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise PlanError(message)


def _gpu_layout(gpus_per_node, student_gpus, teacher_gpus, teacher_gpu_ids, mode, train_gpus, student_tp):
    """(train ids, student-engine ids, teacher ids) on one node, checked against each other."""
    _need(student_gpus >= 1 and teacher_gpus >= 1, f"student_gpus ({student_gpus}) and teacher_gpus "
          f"({teacher_gpus}) must both be >= 1")
    _need(student_gpus + teacher_gpus <= gpus_per_node, f"student_gpus {student_gpus} + teacher_gpus "
          f"{teacher_gpus} = {student_gpus + teacher_gpus} exceeds gpus_per_node {gpus_per_node}")
    if teacher_gpu_ids is None:
        teacher_gpu_ids = tuple(range(gpus_per_node - teacher_gpus, gpus_per_node))
    teacher_gpu_ids = tuple(teacher_gpu_ids)
    _need(len(teacher_gpu_ids) == teacher_gpus, f"teacher_gpu_ids {list(teacher_gpu_ids)} lists "
          f"{len(teacher_gpu_ids)} ids but teacher_gpus is {teacher_gpus}")
    _need(len(set(teacher_gpu_ids)) == teacher_gpus and all(0 <= g < gpus_per_node for g in teacher_gpu_ids),
          f"teacher_gpu_ids {list(teacher_gpu_ids)} must be distinct ids in 0..{gpus_per_node - 1}")
    student_ids = [g for g in range(gpus_per_node) if g not in teacher_gpu_ids][:student_gpus]
    if mode == "colocate":
        _need(train_gpus in (None, student_gpus), f"mode colocate trains on all {student_gpus} student GPUs; "
              f"train_gpus={train_gpus} contradicts it")
        train, engines = student_ids, student_ids
    else:
        # Two thirds train by default: the update holds fp32 optimizer state and 16K-token
        # activations, while TP=1 engines serve rollouts of a <= 9B student comfortably.
        train_gpus = max(1, 2 * student_gpus // 3) if train_gpus is None else train_gpus
        _need(1 <= train_gpus < student_gpus, f"mode split needs 1 <= train_gpus < student_gpus "
              f"({student_gpus}) so that some GPU is left for rollouts; got train_gpus={train_gpus}")
        train, engines = student_ids[:train_gpus], student_ids[train_gpus:]
    _need(len(engines) % student_tp == 0, f"{len(engines)} student engine GPU(s) per node are not divisible "
          f"by student_tp {student_tp}")
    return train, engines, list(teacher_gpu_ids)


def plan(nodes: int, gpus_per_node: int = 8, student_gpus: int = 6, teacher_gpus: int = 2, *,
         mode: str = "split", train_gpus: int | None = None, teacher_gpu_ids: tuple[int, ...] | None = None,
         student_tp: int = 1, train_tp: int = 1, train_pp: int = 1, hosts: list[str] | None = None,
         student_model: str = "Qwen/Qwen3.5-0.8B-Base", teacher_model: str = "Qwen/Qwen3.5-27B-FP8",
         teacher_quantization: str | None = None, sglang_python: str = "/opt/sglang/bin/python",
         run_dir: str = "runs/paper", base_port: int = 30000, router_port: int = 30100,
         master_port: int = 29500, mem_fraction_static: float | None = None) -> dict:
    """Pure: the whole job's layout. Raises PlanError for shapes that do not fit or divide."""
    _need(mode in MODES, f"mode {mode!r} unknown; expected one of {MODES}")
    _need(nodes >= 1, f"nodes must be >= 1, got {nodes}")
    hosts = list(hosts) if hosts is not None else [f"node{i}" for i in range(nodes)]
    _need(len(hosts) == nodes, f"{len(hosts)} host name(s) given for {nodes} node(s)")
    _need(len(set(hosts)) == nodes, f"host names must be distinct, got {hosts}")
    train, engines, teacher = _gpu_layout(gpus_per_node, student_gpus, teacher_gpus, teacher_gpu_ids, mode,
                                          train_gpus, student_tp)
    _need(len(train) % train_tp == 0, f"train_tp {train_tp} does not divide the {len(train)} training GPU(s) of "
          "a node (tensor parallelism must stay inside a node's NVLink domain)")
    world = nodes * len(train)
    _need(world % (train_tp * train_pp) == 0, f"{world} training ranks ({nodes} node(s) x {len(train)}) are not "
          f"divisible by train_tp {train_tp} x train_pp {train_pp}")
    # Co-located engines leave room for the trainer's weights and optimizer state when awake.
    mem = mem_fraction_static if mem_fraction_static is not None else (0.45 if mode == "colocate" else 0.85)
    per_node = []
    for i, host in enumerate(hosts):
        cfg = launch_sglang.LaunchConfig(
            python=sglang_python, student_model=student_model, teacher_model=teacher_model,
            num_students=len(engines) // student_tp, student_tp=student_tp, teacher_tp=len(teacher),
            student_gpus=tuple(engines), teacher_gpus=tuple(teacher), host="0.0.0.0", advertise_host=host,
            base_port=base_port, mem_fraction_static=mem, teacher_quantization=teacher_quantization,
            extra_server_args=("--enable-memory-saver",) if mode == "colocate" else ())
        try:
            servers = launch_sglang.build_plan(cfg)
        except ValueError as err:
            raise PlanError(f"node {host}: {err}") from None
        per_node.append({
            "index": i, "host": host, "train_gpus": train, "student_engine_gpus": engines, "teacher_gpus": teacher,
            "student_urls": servers["addresses"]["student"], "teacher_url": servers["addresses"]["teacher"],
            "addresses_file": f"{run_dir}/sglang/{host}.json",
            "launch_args": _launch_args(cfg, f"{run_dir}/sglang/{host}.json", f"{run_dir}/sglang/logs/{host}"),
        })
    routers = {
        role: {"host": hosts[0], "port": router_port + k, "url": f"http://{hosts[0]}:{router_port + k}",
               "cmd": [sglang_python, "-m", "sglang_router.launch_router", "--host", "0.0.0.0",
                       "--port", str(router_port + k), "--worker-urls", *urls, "--policy", "round_robin"]}
        for k, (role, urls) in enumerate([("student", [u for n in per_node for u in n["student_urls"]]),
                                          ("teacher", [n["teacher_url"] for n in per_node])])
    }
    used = [router_port, router_port + 1, master_port] + [int(u.rsplit(":", 1)[1]) for u in per_node[0]["student_urls"]
                                                         + [per_node[0]["teacher_url"]]]
    _need(len(set(used)) == len(used), f"ports collide on node 0: routers {router_port}/{router_port + 1}, "
          f"torch master {master_port}, servers from {base_port}: {used}")
    return {
        "mode": mode, "nodes": per_node, "routers": routers,
        "trainer": {"nnodes": nodes, "nproc_per_node": len(train), "world_size": world,
                    "tensor_parallel": train_tp, "pipeline_parallel": train_pp,
                    "data_parallel": world // (train_tp * train_pp),
                    "cuda_visible_devices": ",".join(map(str, train)),
                    "rdzv_endpoint": f"{hosts[0]}:{master_port}"},
        # The student's servers are addressed one by one (each needs every weight update, which the
        # router does not forward); its router serves evaluation and users. The teacher goes through its router.
        "overrides": ["student.engine=sglang",
                      "student.urls=[" + ",".join(u for n in per_node for u in n["student_urls"]) + "]",
                      # one group for the trainer's rank 0 and every student engine; "auto": rank 0's
                      # host name, known only once torchrun has placed it
                      "student.weight_sync.fanout=one_group", "student.weight_sync.master_addr=auto",
                      f"student.weight_sync.server_world_size={student_tp}",
                      "teacher.engine=sglang", f"teacher.url={routers['teacher']['url']}"],
        "caveats": ["colocate: weight updates reach every engine from trainer rank 0 (student.urls), not over "
                    "CUDA IPC from the training rank that shares each GPU; set student.release_memory=true "
                    "(never run on a GPU yet)"]
        if mode == "colocate" else [],
    }


# A server that dies is started again this often (the trainer's pool takes it out meanwhile and gives it
# the current weights when it is back: student.fault_tolerance in the recipes).
RESTARTS = 3


def _launch_args(cfg, addresses_out: str, log_dir: str) -> list[str]:
    """tools/launch_sglang.py's command-line arguments for one node (without the interpreter)."""
    args = ["--python", cfg.python, "--student-model", cfg.student_model, "--teacher-model", cfg.teacher_model,
            "--num-students", str(cfg.num_students), "--student-tp", str(cfg.student_tp),
            "--teacher-tp", str(cfg.teacher_tp), "--student-gpus", ",".join(map(str, cfg.student_gpus)),
            "--teacher-gpus", ",".join(map(str, cfg.teacher_gpus)), "--host", cfg.host,
            "--advertise-host", cfg.advertise_host, "--port", str(cfg.base_port),
            "--mem-fraction-static", str(cfg.mem_fraction_static), "--addresses-out", addresses_out,
            "--log-dir", log_dir, "--restart", str(RESTARTS)]
    if cfg.teacher_quantization:
        args += ["--teacher-quantization", cfg.teacher_quantization]
    # "--server-arg=VALUE": a value starting with "--" would otherwise be read as a flag.
    return args + [f"--server-arg={a}" for a in cfg.extra_server_args]


def get(tree: dict, dotted: str):
    """plan["a"]["b"][0] as get(plan, "a.b.0")."""
    node = tree
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, help="node count (default: the number of --hosts)")
    p.add_argument("--hosts", help="comma-separated host names, e.g. from `scontrol show hostnames`")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--student-gpus", type=int, default=6)
    p.add_argument("--teacher-gpus", type=int, default=2)
    p.add_argument("--teacher-gpu-ids", help="comma-separated local ids for the teacher (default: the last ones)")
    p.add_argument("--mode", choices=MODES, default="split")
    p.add_argument("--train-gpus", type=int, help="split mode: student GPUs that train (default: two thirds)")
    p.add_argument("--student-tp", type=int, default=1)
    p.add_argument("--train-tp", type=int, default=1)
    p.add_argument("--train-pp", type=int, default=1)
    p.add_argument("--student-model", default="Qwen/Qwen3.5-0.8B-Base")
    p.add_argument("--teacher-model", default="Qwen/Qwen3.5-27B-FP8")
    p.add_argument("--teacher-quantization", choices=["fp8"], help="for a bf16 teacher checkpoint")
    p.add_argument("--sglang-python", default="/opt/sglang/bin/python")
    p.add_argument("--run-dir", default="runs/paper")
    p.add_argument("--port", type=int, default=30000, help="first SGLang server port on every node")
    p.add_argument("--router-port", type=int, default=30100, help="student router; the teacher's is +1")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--mem-fraction-static", type=float)
    p.add_argument("--dry-run", action="store_true", help="print the plan as JSON")
    p.add_argument("--out", help="write the plan as JSON to this file")
    p.add_argument("--plan", help="read a written plan instead of building one")
    p.add_argument("--get", help="print one value of the plan (dotted path); lists one item per line")
    p.add_argument("--exec-launch", action="store_true",
                   help="replace this process by launch_sglang.py for node $SLURM_NODEID of the plan")
    return p.parse_args(argv)


def _build(a) -> dict:
    hosts = [h for h in a.hosts.split(",") if h] if a.hosts else None
    nodes = a.nodes if a.nodes is not None else (len(hosts) if hosts else 1)
    ids = tuple(int(x) for x in a.teacher_gpu_ids.split(",")) if a.teacher_gpu_ids else None
    return plan(nodes, a.gpus_per_node, a.student_gpus, a.teacher_gpus, mode=a.mode, train_gpus=a.train_gpus,
                teacher_gpu_ids=ids, student_tp=a.student_tp, train_tp=a.train_tp, train_pp=a.train_pp,
                hosts=hosts, student_model=a.student_model, teacher_model=a.teacher_model,
                teacher_quantization=a.teacher_quantization, sglang_python=a.sglang_python, run_dir=a.run_dir,
                base_port=a.port, router_port=a.router_port, master_port=a.master_port,
                mem_fraction_static=a.mem_fraction_static)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        the_plan = json.loads(Path(a.plan).read_text()) if a.plan else _build(a)
    except PlanError as err:
        print(f"slurm_plan: {err}", file=sys.stderr)
        return 2
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(the_plan, indent=2) + "\n")
    if a.dry_run:
        print(json.dumps(the_plan, indent=2))
    if a.get:
        value = get(the_plan, a.get)
        print("\n".join(map(str, value)) if isinstance(value, list) else value)
    if a.exec_launch:
        node = the_plan["nodes"][int(os.environ.get("SLURM_NODEID", "0"))]
        launcher = str(_HERE / "launch_sglang.py")
        os.execv(sys.executable, [sys.executable, launcher, *node["launch_args"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
