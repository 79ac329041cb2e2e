"""The console scripts (``t2starmap``, ``t2starmap-t2smap``) and ``python -m t2starmap``: the
stop signals first, then the app.

Ctrl-C (SIGINT) or SIGTERM at any moment ends the run with 130 or 143 and one line, also
while the command line's modules are still being imported (numpy alone takes a fifth of a
second, seconds on a loaded machine): the handlers are installed here, before that import,
and never put back, so that a signal between the app's return and the exit is caught too.
Only what the interpreter does before this module runs is outside their reach.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from t2starmap.errors import ExitCode, Interrupted
from t2starmap.interrupts import STOP_SIGNALS, install_stop_handlers


def _load_main() -> Callable[[Sequence[str] | None], int]:
    from t2starmap.cli.run import main

    return main


def _load_t2smap() -> Callable[[Sequence[str] | None], int]:
    from t2starmap.cli.t2smap import main

    return main


def run() -> NoReturn:
    """Run the app; exit with its code (130/143 for a stop that came before or after it)."""
    _run_main(_load_main)


def run_t2smap() -> NoReturn:
    """``t2starmap-t2smap``: tedana's t2smap command, with the same stop handling as
    :func:`run`."""
    _run_main(_load_t2smap)


def _run_main(load: Callable[[], Callable[[Sequence[str] | None], int]]) -> NoReturn:
    """Install the stop handlers, then import the entry point ``load`` gives and run it."""
    install_stop_handlers()
    try:
        code = load()(None)
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM (Interrupted), outside main()
        for s in STOP_SIGNALS:  # one line, whatever else arrives now
            signal.signal(s, signal.SIG_IGN)
        if isinstance(err, Interrupted):
            code, what = err.exit_code, f"terminated ({err.name})"
        else:
            code, what = int(ExitCode.INTERRUPTED), "interrupted"
        sys.stderr.write(f"t2starmap ERROR: {what}\n")
    sys.exit(code)
