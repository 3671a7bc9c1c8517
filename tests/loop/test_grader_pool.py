"""The grader pool: every grade under its own limit, failures counted, bad values refused, and no
worker outlives a grade's limit or its parent."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from megatron_zppo.grader_pool import GraderPool
from megatron_zppo.core.records import Question
from megatron_zppo.rewards import GraderError

Q = Question("q", "What is half of one?", "\\frac{1}{2}")
pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, just not yet reaped
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_dead(pids, limit_s=20.0) -> list[int]:
    """The pids still alive after waiting up to `limit_s` (a bounded wait, not a timing check)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def test_a_hanging_grader_scores_zero_within_its_limit_and_the_rest_still_grade():
    with GraderPool("tests.loop.slow_graders:hang", workers=2, timeout_s=1.0) as pool:
        scores = pool.grade(["ok", "HANG", "ok", "ok", "ok"], [Q] * 5)
        assert scores == [1.0, 0.0, 1.0, 1.0, 1.0] and pool.stats.timeouts == 1
        assert pool.grade(["ok"], [Q]) == [1.0]  # the stuck worker was replaced


def test_deadlines_of_hung_grades_run_at_the_same_time():
    with GraderPool("tests.loop.slow_graders:hang", workers=2, timeout_s=8.0) as pool:
        assert pool.grade(["HANG", "HANG"], [Q, Q]) == [0.0, 0.0]
        assert pool.stats.timeouts == 2 and pool.stats.max_in_flight == 2  # not one hung grade after another


def test_worker_start_up_is_not_charged_to_the_time_limit():
    # Starting a worker imports sympy (math-verify, mathruler): over a second, more on a busy machine.
    with GraderPool("math", workers=2, timeout_s=0.3) as pool:
        assert pool.grade(["\\boxed{1/2}"] * 4, [Q] * 4) == [1.0] * 4 and pool.stats.total() == 0


def test_a_crashing_or_dying_grader_scores_zero_and_is_counted():
    with GraderPool("tests.loop.slow_graders:crash", workers=1, timeout_s=5.0) as pool:
        assert pool.grade(["CRASH", "ok"], [Q, Q]) == [0.0, 1.0] and pool.stats.errors == 1
        assert "RuntimeError: grader blew up" in pool.stats.first_problem
    with GraderPool("tests.loop.slow_graders:die", workers=1, timeout_s=5.0) as pool:
        assert pool.grade(["ok", "DIE", "ok"], [Q] * 3) == [1.0, 0.0, 1.0]
        assert pool.stats.crashes == 1 and "grading process died (exit code 1)" in pool.stats.first_problem


def test_a_grader_that_ignores_sigterm_is_killed_and_replaced(tmp_path):
    pid_file = tmp_path / "pid"
    with GraderPool("tests.loop.slow_graders:stubborn", workers=1, timeout_s=1.0) as pool:
        assert pool.grade([f"STUBBORN:{pid_file}", "ok"], [Q, Q]) == [0.0, 1.0]
        assert pool.stats.timeouts == 1
        assert _wait_dead([int(pid_file.read_text())], limit_s=5.0) == []


@pytest.mark.parametrize("grader, shown", [("returns_text", "'1'"), ("returns_none", "None"), ("returns_two", "2.0")])
def test_a_grade_that_is_not_0_or_1_stops_the_run_naming_grader_question_and_value(grader, shown):
    with GraderPool(f"tests.loop.slow_graders:{grader}", workers=1) as pool:
        with pytest.raises(GraderError) as e:
            pool.grade(["\\boxed{1}"], [Q])
    assert f"grader 'tests.loop.slow_graders:{grader}' returned {shown} for question 'q'" in str(e.value)


def test_unknown_or_unimportable_graders_are_refused_at_start_up():
    with pytest.raises(GraderError, match="grader 'mathz' unknown"):
        GraderPool("mathz")
    with pytest.raises(GraderError, match="cannot import 'nope' from module 'tests.loop.slow_graders'"):
        GraderPool("tests.loop.slow_graders:nope")
    with GraderPool("auto") as pool, pytest.raises(GraderError, match="question 'x': grader 'nope' unknown"):
        pool.grade(["a"], [Question("x", "t", "1", metadata={"grader": "nope"})])


def test_workers_die_with_their_parent_even_when_it_is_killed(tmp_path):
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import time
        from megatron_zppo.grader_pool import GraderPool
        from megatron_zppo.core.records import Question
        pool = GraderPool("tests.loop.slow_graders:pid", workers=2)
        pool.grade([{str(pids)!r}] * 2, [Question("q", "t", "1")] * 2)
        print("graded", flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert parent.stdout.readline().strip() == "graded"
        workers = [p.pid for p in _descendants(parent.pid)]
        graders = {int(x) for x in pids.read_text().split()}  # the processes that graded
        assert graders and graders < set(workers)  # ... are grandchildren: a worker forked each
        parent.send_signal(signal.SIGKILL)  # what the OOM killer does: no clean-up runs in the parent
        parent.wait(10)
        assert _wait_dead(workers) == []
    finally:
        parent.kill()


def _descendants(pid: int):
    import psutil

    return psutil.Process(pid).children(recursive=True)


def test_a_grader_that_ignores_sigterm_costs_its_limit_per_grade_not_limit_plus_a_grace(tmp_path):
    # 12 hung grades on 2 workers at 0.2 s: 6 limits one after another, 1.2 s. A SIGTERM grace of
    # 0.5 s before the SIGKILL made it 6 x 0.7 = 4.2 s at the very least; the bound sits between,
    # far enough above 1.2 s for a loaded machine (this bounds a cost that sleeps, not a speed).
    with GraderPool("tests.loop.slow_graders:stubborn", workers=2, timeout_s=0.2) as pool:
        assert pool.grade(["ok", "ok"], [Q, Q]) == [1.0, 1.0]  # the workers are up: start-up is not charged
        t0 = time.monotonic()
        assert pool.grade([f"STUBBORN:{tmp_path / str(i)}" for i in range(12)], [Q] * 12) == [0.0] * 12
        took = time.monotonic() - t0
    assert pool.stats.timeouts == 12 and took < 3.0, took
    assert _wait_dead([int((tmp_path / str(i)).read_text()) for i in range(12)], limit_s=5.0) == []
