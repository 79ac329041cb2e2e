"""Echo times as BIDS files give them: the sidecar's ``EchoTime`` in seconds, and one set's
echoes ordered by it. Torch-free; errors name the file (:class:`~t2starmap.errors.BadDataError`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from t2starmap.errors import BadDataError
from t2starmap.fit.limits import MAX_ECHO_TIME

__all__ = [
    "DUPLICATE_ECHO_TIME",
    "check_distinct_echo_times",
    "echo_time_of",
    "echo_time_seconds",
]

#: Two echoes of one set whose EchoTime differ by at most this (s) are the same echo time.
DUPLICATE_ECHO_TIME = 1e-6


def echo_time_seconds(raw: Any) -> float:
    """One sidecar's ``EchoTime`` value in seconds; numeric strings ("0.02") accepted.

    Raises ValueError when it is not a number, not finite, not positive (BIDS requires
    EchoTime > 0; a 0 means the scanner header had none) or above ``MAX_ECHO_TIME``.
    """
    try:
        value = float(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"EchoTime {raw!r} is not a number") from err
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"EchoTime {raw!r} is not a positive number of seconds")
    if value > MAX_ECHO_TIME:
        raise ValueError(
            f"EchoTime {raw!r} is above {MAX_ECHO_TIME} s: it looks like milliseconds, "
            "BIDS requires seconds"
        )
    return value


def echo_time_of(path: Path, metadata: Mapping[str, Any]) -> float:
    """EchoTime in seconds from the sidecar metadata of the image ``path``.

    Raises BadDataError naming the file (see :func:`echo_time_seconds` for the rules)."""
    if "EchoTime" not in metadata:
        raise BadDataError(f"{path}: the sidecar has no EchoTime (required for multi-echo data)")
    try:
        return echo_time_seconds(metadata["EchoTime"])
    except ValueError as err:
        raise BadDataError(f"{path}: {err}") from err


def check_distinct_echo_times(
    name: str, paths: Sequence[Path], echo_times: Sequence[float]
) -> list[int]:
    """The order that sorts one set's echoes by ascending echo time (ties by path).

    ``name`` names the set in messages; ``paths`` and ``echo_times`` (s) are per echo.
    Raises BadDataError when there are fewer than two echoes, or when two echo times differ by
    at most ``DUPLICATE_ECHO_TIME`` (the message names both files).
    """
    if len(paths) != len(echo_times):
        raise ValueError(f"{len(paths)} paths but {len(echo_times)} echo times")
    if len(paths) < 2:
        raise BadDataError(
            f"{paths[0] if paths else name}: only one echo in set {name}; "
            "a T2* fit needs at least 2"
        )
    order = sorted(range(len(paths)), key=lambda k: (echo_times[k], str(paths[k])))
    for a, b in itertools.pairwise(order):
        if echo_times[b] - echo_times[a] <= DUPLICATE_ECHO_TIME:
            raise BadDataError(
                f"{paths[a]} and {paths[b]}: two echoes of set {name} have the same EchoTime "
                f"({echo_times[a]:.9g} s and {echo_times[b]:.9g} s, within "
                f"{DUPLICATE_ECHO_TIME * 1e6:g} us); every echo needs its own echo time"
            )
    return order
