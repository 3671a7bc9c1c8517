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


def stubborn(response, question):
    """Ignores SIGTERM and hangs; writes its pid to the file named after 'STUBBORN:'."""
    import signal

    if response.startswith("STUBBORN:"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(response.split(":", 1)[1], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)
    return 1.0


def pid(response, question):
    """Appends the worker's pid to the file named by the response, and scores it right."""
    with open(response, "a") as f:
        f.write(f"{os.getpid()}\n")
    return 1.0


def returns_text(response, question):
    return "1"


def returns_none(response, question):
    return None


def returns_two(response, question):
    return 2.0


def sometimes_raises(response, question):
    """Raises on about a third of the answers (a grader with a bug on some inputs), else parity."""
    if len(response) % 3 == 0:
        raise ValueError("cannot parse this answer")
    return float(len(response) % 2 == 0)


def hang_once_armed(response, question):
    """Right, until the file named by $ZPPO_TEST_ARM exists: then every grade hangs (first writing
    $ZPPO_TEST_ARM + '.hanging', so a test knows a grade is stuck)."""
    arm = os.environ["ZPPO_TEST_ARM"]
    if os.path.exists(arm):
        open(arm + ".hanging", "w").close()
        time.sleep(3600)
    return 1.0
