"""What the caller chose for every echo set (:class:`Options`), the error for an option a set
cannot honour, and what one set's fit collects as it goes (step times, warnings)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from t2starmap.errors import BadDataError, UsageError
from t2starmap.fit import (
    Compute,
)
from t2starmap.fit.limits import DEFAULT_METHOD

log = logging.getLogger("t2starmap")


@dataclass(frozen=True)
class Options:
    """What the caller chose for every set: the fit method (one of
    :data:`t2starmap.fit.limits.FIT_CHOICES`), a known noise level and coil count, the
    through-slice correction (``auto``, ``none``, ``through-slice``) and its slice profile
    (``auto``: the headers', else estimated; or a spec of
    :func:`t2starmap.bids.slice_profiles.parse_slice_profile`), the compute device and the CPU chunk
    workers."""

    fit_method: str = DEFAULT_METHOD
    noise_sigma: float | None = None
    noise_coils: float | None = None
    b0_correction: str = "auto"
    slice_profile: str = "auto"
    device: torch.device | str | None = None
    workers: int = 1

    @property
    def compute(self) -> Compute:
        """Where and how every fit of the set runs."""
        return Compute(device=self.device, workers=self.workers)


class OptionError(UsageError):
    """An option (``option``, an :class:`Options` field) this set cannot honour; exit 64, or
    65 (``bad_data``) when the data, not the option, are at fault. The caller words it:
    ``where``, the option, its ``value``, and ``reason``."""

    def __init__(
        self, where: str, option: str, value: Any, reason: str, bad_data: bool = False
    ) -> None:
        super().__init__(f"{where}: {option} {value}: {reason}")
        self.where, self.option, self.value, self.reason = where, option, value, reason
        self.bad_data = bad_data
        if bad_data:
            self.exit_code = BadDataError.exit_code


class Clock(dict[str, float]):
    """Seconds spent in each named step of one set (read, noise, fit, field map, correction,
    maps), in the order they ran."""

    def __init__(self) -> None:
        super().__init__()
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        """The time since the last lap (or since the clock was made) goes to ``step``."""
        now = time.perf_counter()
        self[step] = self.get(step, 0.0) + now - self._last
        self._last = now


class Warnings(list[str]):
    """The set's warnings: logged, and kept for the sidecars and the record."""

    def add(self, message: str) -> None:
        log.warning("%s", message)
        self.append(message)
