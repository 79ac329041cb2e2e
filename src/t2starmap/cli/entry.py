"""The console scripts (``t2starmap``, ``t2starmap-t2smap``) and ``python -m t2starmap``: the
stop signals first, then the app.

Ctrl-C (SIGINT) or SIGTERM at any moment ends the run with 130 or 143 and one line, also
while the command line's modules are still being imported (numpy alone takes a fifth of a
second, seconds on a loaded machine): the handlers are installed here, before that import,
and never put back, so that a signal between the app's return and the exit is caught too.
Only what the interpreter does before this module runs is outside their reach.

numpy's BLAS (OpenBLAS) is held to one thread (``OPENBLAS_NUM_THREADS``, unless the caller set
it), also before numpy is imported: as torch's, its own threads spin waiting for each other
and slow several-fold while another process wants a CPU (a 200x1000 by 1000x13 product of the
slice profile's bootstrap took 12 ms on 2 threads on a busy machine against 0.2 ms on one),
and the app's parallel work is its ``--nprocs`` workers. One thread also gives the same sums
on any machine: OpenBLAS splits a product's sums by its thread count.
"""

from __future__ import annotations

import os
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
    """Install the stop handlers, hold numpy's BLAS to one thread (module docstring), then
    import the entry point ``load`` gives and run it."""
    install_stop_handlers()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
