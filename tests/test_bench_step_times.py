"""bench/step_times.py: the step timer behind ``bench/pg.py --steps`` charges each step its
own CPU time, and its caller the time of the timed steps it calls."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "step_times", Path(__file__).resolve().parent.parent / "bench" / "step_times.py"
)
step_times = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(step_times)


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_caller_is_charged_its_timed_callees_as_child_time():
    inner = step_times.timed("test inner", lambda: spin(0.02))

    def outer_body() -> None:
        spin(0.01)
        inner()
        inner()

    outer = step_times.timed("test outer", outer_body)
    outer()
    cpu, calls = step_times.CPU, step_times.CALLS
    assert calls["test outer"] == 1 and calls["test inner"] == 2
    assert step_times.CHILD_CALLS["test outer"] == 2
    assert step_times.CHILD_CALLS["test inner"] == 0
    assert step_times.CHILD_CPU["test outer"] == pytest.approx(cpu["test inner"])
    own = cpu["test outer"] - step_times.CHILD_CPU["test outer"]
    assert 0.01 <= own < 0.02  # its own spin, not its callees'
    assert cpu["test inner"] >= 0.04


def test_a_step_that_raises_is_still_counted_and_the_error_passes():
    def fail() -> None:
        spin(0.005)
        raise ValueError("boom")

    failing = step_times.timed("test failing", fail)
    caller = step_times.timed("test caller", lambda: failing())
    with pytest.raises(ValueError, match="boom"):
        caller()
    assert step_times.CALLS["test failing"] == 1
    assert step_times.CHILD_CALLS["test caller"] == 1
    assert step_times._active == []  # noqa: SLF001 - the stack unwound


def test_the_timing_cost_is_measured_and_leaves_no_trace():
    inside, outside = step_times.wrapper_overhead()
    assert 0 < inside < 1e-3 and 0 <= outside < 1e-3
    assert "(overhead)" not in step_times.CPU and "(caller)" not in step_times.CALLS
