"""SIGINT and SIGTERM: real signals sent to this process, as exceptions and held off."""

from __future__ import annotations

import os
import signal

import pytest

from t2starmap.errors import Interrupted
from t2starmap.interrupts import deferred_signals, sigterm_raises


def test_sigterm_raises_interrupted_inside_and_nothing_changes_outside() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.exit_code == 143 and caught.value.name == "SIGTERM"
    assert isinstance(caught.value, KeyboardInterrupt)  # the same clean-up paths as Ctrl-C
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("signum", "expected"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Interrupted)]
)
def test_a_deferred_block_runs_to_its_end_then_the_signal_acts(
    signum: int, expected: type[BaseException]
) -> None:
    done = []
    with pytest.raises(expected), sigterm_raises():
        with deferred_signals("a test block"):
            os.kill(os.getpid(), signum)
            os.kill(os.getpid(), signal.SIGINT)  # a second one changes nothing
            done.append("the rest of the block")
        done.append("after the block")  # not reached: the signal acts on leaving it
    assert done == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_error_in_a_deferred_block_wins_over_the_signal() -> None:
    with pytest.raises(ValueError, match="inside"), deferred_signals("a test block"):
        os.kill(os.getpid(), signal.SIGINT)
        raise ValueError("inside")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_signal_nothing_happens() -> None:
    with deferred_signals("a test block"):
        value = 1
    assert value == 1


def test_a_stop_python_drops_in_a_finalizer_is_raised_at_the_next_checkpoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C landing in a finalizer (pybids' database sessions are collected during a fit)
    raises KeyboardInterrupt there, which Python prints and drops; the run still stops at its
    next checkpoint, and prints no traceback."""
    import gc

    from t2starmap.interrupts import raise_if_signalled

    class Finalised:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes, here
                pass

    with sigterm_raises():
        Finalised()
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            raise_if_signalled()
        raise_if_signalled()  # acted on: nothing pending any more
    assert "Traceback" not in capsys.readouterr().err
