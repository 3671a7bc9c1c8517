"""The schedule simulation (benchmarks/sim_schedules.py): exact where the arithmetic is exact,
and the staleness bound held where it is not."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "sim_schedules", Path(__file__).resolve().parents[2] / "benchmarks" / "sim_schedules.py")
sim = importlib.util.module_from_spec(_spec)
sys.modules["sim_schedules"] = sim
_spec.loader.exec_module(sim)

SMALL = dict(questions=8, group=4, teacher_group=2, lanes=16, tok_s=10.0, teacher_tok_s=10.0, train_tok_s=400.0,
             sync_s=3.0, median=100.0, cap=400)


def test_list_scheduling_makespan():
    assert sim.makespan([30, 10, 10, 10], lanes=2, tok_s=10.0) == 3.0
    assert sim.makespan([10] * 5, lanes=2, tok_s=10.0) == 3.0
    assert sim.makespan([], lanes=4, tok_s=1.0) == 0.0


def test_equal_lengths_give_the_closed_forms_and_async_at_k0_is_the_synchronous_loop():
    # Every answer 100 tokens (10 s); a step's 32 answers on 16 lanes: 20 s; it trains 3200 tokens: 8 s.
    c = sim.Cluster(**SMALL, sigma=0.0, hard=0.0)
    qs = sim.draw_questions(c, 5 * c.questions, seed=0)
    none, one = sim.synchronous(c, qs, 4, False), sim.synchronous(c, qs, 4, True)
    assert none.seconds == pytest.approx(4 * (20 + 8 + 3)) and one.seconds == pytest.approx(4 * (3 + 20))
    a0 = sim.asynchronous(c, qs, 4, k=0)
    assert a0.seconds == pytest.approx(none.seconds) and a0.trained_tokens == none.trained_tokens
    assert a0.dropped == 0 and a0.max_staleness == 0
    b0 = sim.batches(c, qs, 4, k=0)  # as built: a batch per step, admitted in turn
    assert b0.seconds == pytest.approx(none.seconds) and b0.trained_tokens == none.trained_tokens
    # k = 1: the lanes decode batch j+1 while step j trains (8 of its 20 s) and stop for the sync (3 s), so
    # 12 s of it are left when the step ends. The first step takes 20 + 8 + 3, every later one 12 + 8 + 3.
    b1 = sim.batches(c, qs, 4, k=1)
    assert b1.seconds == pytest.approx(31 + 3 * 23) and b1.max_staleness == 1


def test_with_a_length_tail_async_trains_faster_and_never_on_anything_staler_than_k():
    c = sim.Cluster(**SMALL, sigma=1.0, hard=0.25)
    qs = sim.draw_questions(c, 40 * c.questions, seed=1)
    none, one = sim.synchronous(c, qs, 30, False), sim.synchronous(c, qs, 30, True)
    assert one.tokens_per_s > none.tokens_per_s
    for k in (1, 2):
        r = sim.asynchronous(c, qs, 30, k)
        assert r.max_staleness <= k and r.tokens_per_s > one.tokens_per_s
        assert r.trained_tokens <= r.generated_tokens
        b = sim.batches(c, qs, 30, k)
        assert b.max_staleness <= k and b.dropped == 0 and b.tokens_per_s > one.tokens_per_s
        assert b.trained_tokens == none.trained_tokens  # the same questions, all of them trained
