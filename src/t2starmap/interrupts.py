"""SIGINT and SIGTERM: how a run stops, and the short sections it finishes first.

SIGINT (Ctrl-C) raises :class:`KeyboardInterrupt` in Python already; :func:`sigterm_raises`
makes SIGTERM (what SLURM sends before SIGKILL, and ``docker stop``, ``kill``) raise
:class:`t2starmap.errors.Interrupted`, a subclass of it, so that one clean-up path serves
both. Only the command line's ``main`` installs it, and puts the previous handler back.

:func:`deferred_signals` runs a block to its end although a signal arrives (publishing one
participant's outputs, removing what a stopped run created) and acts on the signal after it.
Signal handlers can only be set from the main thread; elsewhere both are no-ops.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from types import FrameType
from typing import Any

from t2starmap.errors import Interrupted

log = logging.getLogger("t2starmap")

#: The signals a run stops for.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


#: The stop signals received inside :func:`sigterm_raises` and not yet acted on. A signal is
#: process state: an exception its handler raises while Python runs a finalizer (a garbage-
#: collected database session of pybids, say) is printed and dropped ("Exception ignored
#: in ..."), so the run also asks here, at its checkpoints (:func:`raise_if_signalled`).
_PENDING: list[int] = []


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    _PENDING.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum, signal.Signals(signum).name)


def raise_if_signalled() -> None:
    """Raise the stop (KeyboardInterrupt or :class:`Interrupted`) for a signal received but
    not acted on: its exception was raised where Python drops exceptions (a finalizer)."""
    if _PENDING:
        signum = _PENDING[0]
        _PENDING.clear()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum, signal.Signals(signum).name)


def install_stop_handlers() -> None:
    """From now on SIGINT raises KeyboardInterrupt and SIGTERM :class:`Interrupted` (each also
    remembered for :func:`raise_if_signalled`), for good; an ignored one stays ignored. For the
    program's entry point, before its heavy imports (:mod:`t2starmap.cli.entry`)."""
    if not _in_main_thread():
        return
    for s in STOP_SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _raise_stop)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` (exit 143) and SIGINT
    KeyboardInterrupt (exit 130), each also remembered for :func:`raise_if_signalled`; the
    previous handlers are restored afterwards. A signal that the parent process set to be
    ignored stays ignored."""
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, _raise_stop)
    _PENDING.clear()
    unraisable = sys.unraisablehook
    sys.unraisablehook = partial(_quiet_stops, unraisable)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        for s, handler in previous.items():
            signal.signal(s, handler)
        _PENDING.clear()


def _quiet_stops(fallback: Any, unraisable: Any) -> None:
    """A stop raised where Python cannot raise it (a finalizer) is pending, not an error to
    print with its traceback; anything else goes to the hook in place before."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _PENDING:
        return
    fallback(unraisable)


def _deliver(signum: int, handler: Any) -> None:
    """Act on ``signum`` as ``handler`` (the handler the block replaced) would have."""
    if handler is signal.SIG_IGN:
        return
    if callable(handler):
        handler(signum, None)
        return
    signal.raise_signal(signum)  # SIG_DFL (or a handler set outside Python): its default


@contextmanager
def deferred_signals(what: str) -> Iterator[None]:
    """Run the block to its end even when SIGINT or SIGTERM arrive meanwhile; then act on the
    first that arrived as the handler in place before the block would have (raise
    KeyboardInterrupt / :class:`Interrupted`). ``what`` names the block in the log line that
    says why the run does not stop at once. When the block itself raises, that exception
    goes on and the signal is dropped: the run ends either way. A signal ignored when the
    block starts (``nohup``, ``cmd &`` in a script) stays ignored, silently."""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if not received:
            log.warning(
                "%s received: finishing %s first, then stopping",
                signal.Signals(signum).name,
                what,
            )
        received.append(signum)

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        _deliver(received[0], previous[signal.Signals(received[0])])
