"""Graders that misbehave, importable by the grader worker processes (module:function)."""

import os
import time


def hang(response, question):
    if "HANG" in response:
        time.sleep(3600)
    return 1.0


def crash(response, question):
    if "CRASH" in response:
        raise RuntimeError("grader blew up")
    return 1.0


def die(response, question):
    if "DIE" in response:
        os._exit(1)  # the worker process vanishes
    return 1.0


def parity(response, question):
    """Right about half the time, deterministically: random toy models then have hard questions
    (the student fails) and correct teacher rollouts both, which the baselines need."""
    return float(len(response) % 2 == 0)


def never(response, question):
    """Every answer wrong: every question is hard, and NCQ prompts are certain to be built."""
    return 0.0
