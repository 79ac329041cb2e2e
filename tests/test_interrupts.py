"""SIGINT and SIGTERM: real signals sent to this process, as exceptions and held off."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

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


def test_an_ignored_signal_stays_ignored_silently(caplog: pytest.LogCaptureFixture) -> None:
    """``nohup``, ``cmd &`` in a script: SIGINT starts ignored, and a deferred block must not
    take it up (log "... then stopping" and then not stop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the autouse fixture puts it back
    done = []
    with sigterm_raises(), deferred_signals("a test block"):
        os.kill(os.getpid(), signal.SIGINT)
        done.append("the block")
    done.append("after it")
    assert done == ["the block", "after it"]
    assert "SIGINT" not in caplog.text
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
)
@pytest.mark.parametrize(
    ("script", "loader"), [("run", "_load_main"), ("run_t2smap", "_load_t2smap")]
)
def test_a_stop_while_the_app_is_imported_is_its_code_and_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    code: int,
    line: str,
    script: str,
    loader: str,
) -> None:
    """A signal before the command line's modules are loaded (numpy takes a fifth of a
    second, more under load): the code and one line, not death by the signal (exit -2);
    for both console scripts."""
    from t2starmap.cli import entry

    def load_slowly() -> object:
        os.kill(os.getpid(), signum)  # lands while "importing"
        raise AssertionError("the signal did not stop the import")

    monkeypatch.setattr(entry, loader, load_slowly)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as stopped:
            getattr(entry, script)()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert stopped.value.code == code
    assert capsys.readouterr().err == f"t2starmap ERROR: {line}\n"


def test_a_run_started_with_sigint_ignored_is_not_stopped_by_it(
    example: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from t2starmap.cli.run import main
    from t2starmap.workflows import participant as workflow

    real_publish = workflow.publish

    def publish_and_get_sigint(*args: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_publish(*args)

    monkeypatch.setattr(workflow, "publish", publish_and_get_sigint)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the autouse fixture puts it back
    out = tmp_path / "out"
    argv = [str(example), str(out), "participant", "--skip-bids-validation"]
    assert main([*argv, "--participant-label", "01"]) == 0
    assert "SIGINT" not in capsys.readouterr().err
    assert (out / "sub-01.html").is_file()


def test_both_console_scripts_go_through_the_entry_module() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "t2starmap": "t2starmap.cli.entry:run",
        "t2starmap-t2smap": "t2starmap.cli.entry:run_t2smap",
    }


def test_t2smap_run_with_sigint_ignored_is_not_stopped_by_it(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``t2starmap-t2smap`` started with SIGINT ignored (nohup, a batch system): a SIGINT
    during the fit changes nothing; the run completes with 0 and every file."""
    from t2starmap.cli import entry
    from t2starmap.fit import bold
    from tests.support.bold import t2smap_args, written_run

    synthetic = written_run(tmp_path_factory, (8, 8, 4), 6, seed=1)
    real_fit = bold.fit_loglin

    def fit_and_get_sigint(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(bold, "fit_loglin", fit_and_get_sigint)
    monkeypatch.setattr("sys.argv", ["t2starmap-t2smap", *t2smap_args(synthetic, tmp_path / "o")])
    sigterm = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the autouse fixture puts it back
    try:
        with pytest.raises(SystemExit) as done:
            entry.run_t2smap()
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert done.value.code == 0
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert "interrupted" not in capsys.readouterr().err
    assert (tmp_path / "o" / "T2starmap.nii.gz").is_file()


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("3", "3")])
def test_numpy_blas_gets_one_thread_before_numpy_is_imported(
    given: str | None, expected: str
) -> None:
    """The console scripts hold OpenBLAS to one thread (its threads spin on a busy machine)
    unless the caller chose a count, and set it before numpy is first imported (where it
    takes effect)."""
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from t2starmap.cli import entry\n"
        "def load():\n"
        "    assert 'numpy' not in sys.modules\n"
        "    return lambda argv: 40 + int(os.environ['OPENBLAS_NUM_THREADS'])\n"
        "entry._run_main(load)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    done = subprocess.run([sys.executable, "-c", script], env=env, check=False)
    assert done.returncode == 40 + int(expected)
