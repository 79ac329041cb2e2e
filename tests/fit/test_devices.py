"""Every model through the same code path on every device: the maps are computed where asked
and equal the CPU's within float32 rounding (the ``gpu`` half runs where torch sees CUDA)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from t2starmap.fit import Compute, FitResult, NoiseModel, fit_complex, fit_corrected, fit_t2star
from t2starmap.fit.limits import MAGNITUDE_METHODS
from t2starmap.fit.phase import analyse_phase
from t2starmap.sim.slices import make_slice_phantom
from tests.support.factors import rect_factor

PHANTOM = make_slice_phantom((16, 16, 5), snr=60.0, seed=12, samples=16)
TE = PHANTOM.echo_times
SIGNAL = (PHANTOM.magnitude * np.exp(1j * PHANTOM.phase)).astype(np.complex64)
FACTOR = rect_factor(PHANTOM.gradient_hz_per_mm, 3.0, TE)

NOISE = NoiseModel(sigma=PHANTOM.sigma)
FITS: dict[str, Callable[[str], FitResult]] = {
    **{
        f"magnitude {m}": (lambda device, m=m: fit_t2star(  # type: ignore[misc]
            PHANTOM.magnitude, TE, method=m, noise=NOISE, compute=Compute(device=device)))
        for m in MAGNITUDE_METHODS
    },
    "complex": lambda device: fit_complex(SIGNAL, TE, noise=NOISE, compute=Compute(device=device)),
    "complex bipolar": lambda device: fit_complex(
        SIGNAL, TE, noise=NOISE, compute=Compute(device=device), bipolar=True),
    "corrected gaussian": lambda device: fit_corrected(
        PHANTOM.magnitude, TE, FACTOR, noise=NOISE.gaussian(),
        compute=Compute(device=device)).result,
    "corrected noise-aware": lambda device: fit_corrected(
        PHANTOM.magnitude, TE, FACTOR, noise=NOISE, compute=Compute(device=device)).result,
}  # fmt: skip
_CPU: dict[str, FitResult] = {}


def cpu_fit(name: str) -> FitResult:
    if name not in _CPU:
        _CPU[name] = FITS[name]("cpu")
    return _CPU[name]


@pytest.mark.parametrize("name", list(FITS))
def test_every_model_on_every_device(device: str, name: str) -> None:
    got = FITS[name](device)
    assert got.device.startswith(device)
    assert got.r2star.device.type == device and got.reason.device.type == device
    reference = cpu_fit(name)
    same = got.reason.cpu() == reference.reason
    assert same.float().mean() > 0.99, name  # an LM stop may move by one step
    for key in ("r2star", "s0", "chisq"):
        torch.testing.assert_close(
            getattr(got, key).cpu()[same], getattr(reference, key)[same], rtol=2e-3, atol=1e-3
        )


def test_the_phase_checks_on_every_device(device: str) -> None:
    got = analyse_phase(SIGNAL, TE, noise_sigma=PHANTOM.sigma, compute=Compute(device=device))
    reference = analyse_phase(SIGNAL, TE, noise_sigma=PHANTOM.sigma, compute=Compute(device="cpu"))
    assert got.verdict == reference.verdict
    np.testing.assert_allclose(
        got.maps["frequency"], reference.maps["frequency"], rtol=1e-4, atol=1e-3
    )
