"""tools/launch_sglang.py: the pure plan for several cluster shapes, bad inputs, and a real lifecycle.

The lifecycle test hands the launcher a stand-in "Python of the SGLang env" that starts the fake
server on the requested port, so start-up, the health wait, the addresses file and SIGTERM
shutdown all run for real without SGLang.
"""

import importlib.util
import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("launch_sglang", REPO / "tools" / "launch_sglang.py")
launch = importlib.util.module_from_spec(_spec)
sys.modules["launch_sglang"] = launch  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(launch)

pytestmark = pytest.mark.timeout(60)


def plan_for(**kwargs):
    return launch.build_plan(launch.LaunchConfig(python="/envs/sglang/bin/python", **kwargs))


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_one_student_and_one_teacher_on_default_gpus():
    plan = plan_for(student_model="/m/student", teacher_model="/m/teacher")
    student, teacher = plan["processes"]
    assert student["cmd"][:3] == ["/envs/sglang/bin/python", "-m", "sglang.launch_server"]
    assert flag(student["cmd"], "--model-path") == "/m/student" and flag(student["cmd"], "--host") == "127.0.0.1"
    assert (student["env"], teacher["env"]) == ({"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"})
    assert flag(teacher["cmd"], "--port") == "30001" and "--quantization" not in teacher["cmd"]
    assert plan["addresses"] == {"student": ["http://127.0.0.1:30000"], "student_router": None,
                                 "teacher": "http://127.0.0.1:30001"}


def test_three_students_behind_a_router_and_an_fp8_teacher_on_gpus_6_7():
    plan = plan_for(student_model="S", teacher_model="T", num_students=3, router=True, student_gpus=(0, 1, 2),
                    teacher_gpus=(6, 7), teacher_tp=2, teacher_quantization="fp8", api_key="k1",
                    admin_api_key="k2", base_port=31000, router_port=32000)
    names = [p["name"] for p in plan["processes"]]
    assert names == ["student0", "student1", "student2", "teacher", "student_router"]
    by_name = {p["name"]: p for p in plan["processes"]}
    assert [by_name[f"student{i}"]["env"]["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "2"]
    teacher = by_name["teacher"]
    assert teacher["env"]["CUDA_VISIBLE_DEVICES"] == "6,7" and flag(teacher["cmd"], "--tp-size") == "2"
    assert flag(teacher["cmd"], "--quantization") == "fp8" and flag(teacher["cmd"], "--admin-api-key") == "k2"
    router = by_name["student_router"]["cmd"]
    assert router[2] == "sglang_router.launch_router" and flag(router, "--port") == "32000"
    assert router[router.index("--worker-urls") + 1:router.index("--policy")] == [
        "http://127.0.0.1:31000", "http://127.0.0.1:31001", "http://127.0.0.1:31002"]
    assert plan["addresses"]["student_router"] == "http://127.0.0.1:32000"
    assert plan["addresses"]["teacher"] == "http://127.0.0.1:31003"
    printed = json.dumps(launch.redacted(plan))
    assert "k1" not in printed and "k2" not in printed and "***" in printed


def test_cpu_servers_get_the_cpu_engine_env_and_a_bounded_kv_pool():
    plan = plan_for(student_model="S", device="cpu", max_total_tokens=8192, cpu_kernel_shim="/shim",
                    host="0.0.0.0", advertise_host="node3")
    [student] = plan["processes"]
    assert student["env"] == {"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": "/shim"}
    assert flag(student["cmd"], "--device") == "cpu" and flag(student["cmd"], "--max-total-tokens") == "8192"
    assert "--mem-fraction-static" not in student["cmd"] and flag(student["cmd"], "--host") == "0.0.0.0"
    assert plan["addresses"] == {"student": ["http://node3:30000"], "student_router": None, "teacher": None}


@pytest.mark.parametrize("kwargs, message", [
    ({"num_students": 0}, "num-students must be >= 1"),
    ({"num_students": 2, "student_gpus": (0, 1, 2)}, "lists 3 ids but 2 student"),
    ({"teacher_model": "T", "student_gpus": (0,), "teacher_gpus": (0,)}, "distinct"),
    ({"teacher_model": "T", "teacher_tp": 2, "teacher_gpus": (5,)}, "teacher tp 2 needs 2"),
    ({"device": "cpu"}, "max-total-tokens is required"),
    ({"device": "cpu", "max_total_tokens": 64, "student_gpus": (0,)}, "GPU ids make no sense"),
    ({"teacher_model": "T", "teacher_quantization": "int3"}, "must be fp8"),
    ({"mem_fraction_static": 1.5}, "mem-fraction-static"),
    ({"router": True, "router_port": 30000}, "ports must be distinct"),
    ({"base_port": 65535, "teacher_model": "T"}, "1..65535"),
])
def test_bad_inputs_are_refused_with_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_for(student_model="S", **kwargs)


def test_dry_run_prints_the_plan_and_bad_input_exits_2(capsys):
    assert launch.main(["--python", "py", "--student-model", "S", "--teacher-model", "T", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["addresses"]["teacher"] == "http://127.0.0.1:30001"
    assert launch.main(["--python", "py", "--student-model", "S", "--num-students", "0"]) == 2


SHIM = """#!{python}
import sys
sys.path.insert(0, {repo!r})
args = sys.argv[1:]
if "crash" in args:
    sys.exit(3)
from tests.rollout.fake_sglang import serve_forever
serve_forever(int(args[args.index("--port") + 1]))
"""


def free_base_port(count: int) -> int:
    start = 34000 + random.randrange(97) * 97  # tests running at once (pytest-xdist) start at different ports
    for base in [*range(start, 60000, 97), *range(34000, start, 97)]:
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


def start_launcher(tmp_path, *extra):
    shim = tmp_path / "python"
    shim.write_text(SHIM.format(python=sys.executable, repo=str(REPO)))
    shim.chmod(0o755)
    cmd = [sys.executable, str(REPO / "tools" / "launch_sglang.py"), "--python", str(shim), "--device", "cpu",
           "--max-total-tokens", "64", "--addresses-out", str(tmp_path / "addr.json"),
           "--log-dir", str(tmp_path / "logs"), "--health-timeout-s", "30", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_launcher_waits_for_health_writes_addresses_and_stops_servers_on_sigterm(tmp_path):
    base = free_base_port(4)
    proc = start_launcher(tmp_path, "--student-model", "S", "--teacher-model", "T", "--num-students", "2",
                          "--router", "--port", str(base))
    deadline = time.monotonic() + 40
    while not (tmp_path / "addr.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.2)
    addresses = json.loads((tmp_path / "addr.json").read_text())
    urls = addresses["student"] + [addresses["teacher"], addresses["student_router"]]
    assert urls == [f"http://127.0.0.1:{base + i}" for i in range(4)]
    assert all(httpx.get(u + "/health_generate", timeout=5).status_code == 200 for u in urls)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health_generate", timeout=2)


def test_launcher_fails_fast_when_a_server_dies_during_start_up(tmp_path):
    proc = start_launcher(tmp_path, "--student-model", "crash", "--port", str(free_base_port(1)))
    assert proc.wait(timeout=30) == 1
    assert "student0 exited with code 3" in proc.stderr.read()
    assert not (tmp_path / "addr.json").exists()


def test_launcher_restarts_a_server_that_dies_up_to_n_times_then_stops_them_all(tmp_path):
    import psutil

    base = free_base_port(2)
    proc = start_launcher(tmp_path, "--student-model", "S", "--num-students", "2", "--port", str(base),
                          "--restart", "1")
    try:
        deadline = time.monotonic() + 40
        while not (tmp_path / "addr.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{base + 1}"

        def kill_student1():
            server = [c for c in psutil.Process(proc.pid).children() if str(base + 1) in c.cmdline()]
            assert len(server) == 1
            server[0].kill()
            return server[0].pid

        first = kill_student1()
        deadline = time.monotonic() + 40
        while True:  # the launcher notices within its 2 s poll and starts it again, on the same port
            try:
                if httpx.get(url + "/health_generate", timeout=2).status_code == 200 and not psutil.pid_exists(first):
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "not restarted"
            time.sleep(0.2)
        kill_student1()  # the second death is past --restart 1: every server stops
        assert proc.wait(timeout=30) == 1
        out, err = proc.communicate()
        assert "student1 exited with code -9; starting it again (1 of 1)" in out
        assert "student1 exited with code -9 (restarted 1 time(s) already)" in err
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{base}/health_generate", timeout=2)
    finally:
        proc.kill()
