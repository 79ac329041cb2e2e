"""Can the phase of a set give a field map? The checks, and the field map, without a fit.

Pure torch. Real vendor data break the assumption that the phase grows linearly with TE
(NOTES.md, "Phase that cannot be used"): bipolar read-outs give the odd and the even echoes
each one frequency with an offset between them; some phase follows no frequency at all. So,
per voxel, in closed form from the echo products z_k = x_{k+lag} conj(x_k)
(:mod:`t2starmap.fit.starts`):

* the frequency from consecutive echoes (lag 1), and from echoes of the same parity (lag 2,
  the same read-out polarity: known modulo 1 / (2 dTE) only);
* their coherences, |sum_k z_k e^{-i omega gap_k}| / sum_k |z_k| (1: one frequency; about
  |cos psi| at lag 1 for a bipolar train with odd/even offset psi; low for phase that follows
  no frequency), and the offset psi between the even and the odd echoes;
* each voxel's phase check against the monopolar and the bipolar complex model at those
  closed-form points, as the complex fit checks its solution (``Failure.PHASE_MODEL``:
  the residual across the model against the noise); a voxel whose coherence reaches
  ``TRUSTED_COHERENCE`` passes anyway (high SNR makes the test see deviations too small to
  matter).

Per set, over the bright voxels of the mask (first echo above 10 sigma, or its upper half
without a noise level), :func:`analyse_phase` decides: ``bipolar`` when at least
``TRUSTED_SHARE`` of them pass the bipolar check with a median |psi| of at least
``BIPOLAR_OFFSET``; else ``coherent`` when that share pass the monopolar check; else
``incoherent``. A coherent
set's field map comes from consecutive echoes, a bipolar set's from same-parity echoes; an
incoherent set has none. Voxels failing the check of their set's model are untrusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from t2starmap.fit import dispatch, starts
from t2starmap.fit.complex import (
    DEFAULT_CHUNK,
    DEFAULT_CUDA_CHUNK,
    TRUSTED_COHERENCE,
    frequency_limit,
    phase_fails,
    phase_thresholds,
    prepare,
    start,
)
from t2starmap.fit.dispatch import Compute
from t2starmap.fit.limits import NoiseModel, check_echo_times
from t2starmap.fit.models import Complex
from t2starmap.fit.result import FitResult
from t2starmap.fit.solver import lt
from t2starmap.fit.status import Failure

#: Share of the bright voxels whose phase must pass a model's check for the set to follow it.
TRUSTED_SHARE = 0.5
#: Median |odd/even offset| (rad, folded into [0, pi/2]) from which a set whose phase passes
#: the bipolar check is called bipolar: real bipolar trains reach +-1.5 rad (NOTES.md); the
#: monopolar GE kidney's median is 0.11-0.13 (noise folded into |psi|, fat), the simulator's
#: 0.008; a single-frequency complex model of a train with offsets of 0.3 rad and more is
#: biased by several per cent.
BIPOLAR_OFFSET = 0.3
#: The verdicts of :func:`analyse_phase`.
COHERENT, BIPOLAR, INCOHERENT = "coherent", "bipolar", "incoherent"


@dataclass(frozen=True)
class FieldMap:
    """A field map for the field-gradient correction: ``frequency_hz`` (...) the off-resonance
    in Hz, known modulo ``wrap_period_hz`` (None: unwrapped); ``untrusted`` (...) bool, voxels
    whose field is not to be used; ``method`` how it was made."""

    frequency_hz: np.ndarray
    untrusted: np.ndarray
    wrap_period_hz: float | None
    method: str

    @classmethod
    def from_fit(
        cls, result: FitResult, echo_times: Sequence[float] | np.ndarray, bipolar: bool = False
    ) -> FieldMap:
        """The field map of a complex fit (``bipolar``: of the bipolar model). Voxels whose
        input is unusable, whose fit did not converge or found no signal, or whose phase does
        not follow the model are not trusted; a decay that does not follow the model (R2*
        clamped, misfit: through-slice dephasing is such a decay) says nothing against the
        field."""
        if result.frequency is None:
            raise ValueError(f"a {result.method} fit has no field map")
        bad = Failure.BAD_INPUT | Failure.NOT_CONVERGED | Failure.S0_NONPOSITIVE
        return cls(
            result.frequency.cpu().numpy().astype(np.float64),
            (result.reason.cpu().numpy() & int(bad | Failure.PHASE_MODEL)) != 0,
            2.0 * frequency_limit(echo_times, bipolar),
            "bipolar complex fit" if bipolar else "complex fit",
        )


@dataclass(frozen=True)
class PhaseAnalysis:
    """:func:`analyse_phase`'s result. Set level: ``verdict`` (coherent, bipolar, incoherent)
    and ``reason`` (one sentence), ``coherence`` and ``parity_coherence`` (medians over the
    bright voxels, lag 1 and lag 2), ``offset_rad`` (median |psi|), ``trusted_share`` (share
    of the bright voxels passing the monopolar check) and ``bipolar_share`` (the bipolar
    check), ``n_bright``. Maps (...): ``maps`` by name (frequency, frequency_parity, coherence,
    parity_coherence, offset; mono_failed and bipolar_failed, bool)."""

    verdict: str
    reason: str
    coherence: float
    parity_coherence: float
    offset_rad: float
    trusted_share: float
    bipolar_share: float
    n_bright: int
    wrap_period_hz: float
    maps: dict[str, np.ndarray] = field(repr=False)

    @property
    def bipolar(self) -> bool:
        return self.verdict == BIPOLAR

    def field_map(self) -> FieldMap | None:
        """The set's field map from the phase differences (None for incoherent phase)."""
        if self.verdict == INCOHERENT:
            return None
        if self.bipolar:
            return FieldMap(
                self.maps["frequency_parity"],
                self.maps["bipolar_failed"],
                self.wrap_period_hz / 2.0,
                "phase differences of same-parity echoes (bipolar read-out)",
            )
        return FieldMap(
            self.maps["frequency"],
            self.maps["mono_failed"],
            self.wrap_period_hz,
            "phase differences",
        )


_MAPS = ("frequency", "frequency_parity", "coherence", "parity_coherence", "offset", "bipolar_bad")


def analyse_phase(
    signal: np.ndarray | torch.Tensor,
    echo_times: Sequence[float] | np.ndarray,
    *,
    mask: np.ndarray | None = None,
    noise_sigma: float | None = None,
    compute: Compute = Compute(),
) -> PhaseAnalysis:
    """The phase checks of a complex ``signal`` (..., E), echoes ascending in ``echo_times``
    (s), in every voxel of ``mask`` (others untrusted), and the set's verdict (see the module
    docstring). Needs 3 echoes for any check (with 2, one frequency always fits: coherent);
    4 for the bipolar one."""
    NoiseModel(noise_sigma)  # checks it
    how = dispatch.plan(compute, (DEFAULT_CHUNK, DEFAULT_CUDA_CHUNK))
    te_np = check_echo_times(np.asarray(echo_times, dtype=np.float64))
    if np.unique(te_np).size != te_np.size:
        raise ValueError(f"a field map needs distinct echo times, got {te_np.tolist()}")
    vox = dispatch.voxels([signal], te_np.size, mask)
    order = [int(k) for k in np.argsort(te_np, kind="stable")]
    te = torch.as_tensor(te_np[order], dtype=how.dtype, device=how.device)[:, None]
    kernel = partial(_kernel, te=te, order=order, sigma=noise_sigma)
    maps, reason = dispatch.run_chunks(vox, kernel, _MAPS, how, cast=False)
    inside = np.ones(vox.spatial, bool) if mask is None else np.asarray(mask, bool)
    out = {k: v.cpu().numpy().astype(np.float64) for k, v in maps.items()}
    bits = reason.cpu().numpy()
    bad_input = (bits & int(Failure.BAD_INPUT)) > 0
    bipolar_bad = out.pop("bipolar_bad") > 0.5
    out["mono_failed"] = np.asarray((bits != 0) | ~inside)
    out["bipolar_failed"] = np.asarray(bipolar_bad | bad_input | ~inside)
    bright = _bright(signal, inside, bits, noise_sigma)
    return _verdict(out, bright, 2.0 * frequency_limit(te_np))


def _bright(
    signal: np.ndarray | torch.Tensor, inside: np.ndarray, bits: np.ndarray, sigma: float | None
) -> np.ndarray:
    """The voxels the set's verdict rests on: usable, in the mask, first echo above 10 sigma
    (without a noise level: above the mask's median first echo)."""
    first = np.abs(np.asarray(torch.as_tensor(signal)[..., 0].cpu().numpy()))
    usable = inside & ((bits & int(Failure.BAD_INPUT)) == 0) & np.isfinite(first)
    if sigma is not None:
        return np.asarray(usable & (first > 10.0 * sigma))
    if not usable.any():
        return np.asarray(usable)
    return np.asarray(usable & (first > np.median(first[usable])))


def _verdict(maps: dict[str, np.ndarray], bright: np.ndarray, wrap: float) -> PhaseAnalysis:
    n = int(bright.sum())

    def median(key: str) -> float:
        return float(np.median(np.abs(maps[key][bright]))) if n else float("nan")

    trusted = float(np.mean(~maps["mono_failed"][bright])) if n else 0.0
    bipolar_ok = float(np.mean(~maps["bipolar_failed"][bright])) if n else 0.0
    offset = median("offset")
    c1, c2 = median("coherence"), median("parity_coherence")
    if n and bipolar_ok >= TRUSTED_SHARE and offset >= BIPOLAR_OFFSET:
        verdict = BIPOLAR
        reason = (
            f"bipolar read-out detected: odd and even echoes each follow one frequency "
            f"(same-parity coherence {c2:.2f}) with an offset between them (median "
            f"{offset:.2f} rad); one frequency fits {trusted:.0%} of the bright voxels"
        )
    elif n and trusted >= TRUSTED_SHARE:
        verdict = COHERENT
        reason = f"the phase follows one frequency in {trusted:.0%} of the bright voxels"
    else:
        verdict = INCOHERENT
        reason = (
            f"the phase follows no frequency: consecutive-echo coherence {c1:.2f}, one "
            f"frequency fits {trusted:.0%} and a bipolar model {bipolar_ok:.0%} of the "
            f"{n} bright voxels"
            if n
            else "no bright voxel to judge the phase by"
        )
    return PhaseAnalysis(verdict, reason, c1, c2, offset, trusted, bipolar_ok, n, wrap, maps)


def _kernel(
    rows: tuple[torch.Tensor, ...],
    te: torch.Tensor,
    order: Sequence[int],
    sigma: float | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One chunk: the maps of :data:`_MAPS` and the bits BAD_INPUT or PHASE_MODEL (the
    monopolar check at its closed-form point)."""
    x_re, x_im, mag, scale, usable = prepare(rows[0], order, te.dtype, sigma)
    n_echo = te.shape[0]
    out: dict[str, torch.Tensor] = {}
    mono = start(x_re, x_im, mag, te, bipolar=False)
    out["frequency"] = mono[3] / (2.0 * math.pi)
    out["coherence"] = starts.coherence(x_re, x_im, te, mono[3])
    mono_bad = _check(Complex(te), (x_re, x_im), mono, scale, sigma)
    mono_bad = mono_bad * lt(out["coherence"], TRUSTED_COHERENCE)
    if n_echo >= 4:
        bip = start(x_re, x_im, mag, te, bipolar=True)
        out["frequency_parity"] = bip[3] / (2.0 * math.pi)
        out["parity_coherence"] = starts.coherence(x_re, x_im, te, bip[3], lag=2)
        # psi and psi + pi are one model with f shifted by 1 / (2 dTE): only the distance
        # to {0, pi} is an offset one frequency cannot absorb
        out["offset"] = math.pi / 2 - (bip[4].abs() - math.pi / 2).abs()
        bip_bad = _check(Complex(te, bipolar=True), (x_re, x_im), bip, scale, sigma)
        out["bipolar_bad"] = bip_bad * lt(out["parity_coherence"], TRUSTED_COHERENCE)
    else:
        out["frequency_parity"] = out["frequency"]
        out["parity_coherence"] = out["coherence"]
        out["offset"] = torch.zeros_like(out["frequency"])
        out["bipolar_bad"] = mono_bad.clone()
    out = {k: torch.nan_to_num(v) * usable for k, v in out.items()}
    bits = torch.where(
        usable > 0.5, mono_bad * float(Failure.PHASE_MODEL), float(Failure.BAD_INPUT)
    )
    return out, bits


def _check(
    model: Complex,
    data: tuple[torch.Tensor, torch.Tensor],
    point: torch.Tensor,
    scale: torch.Tensor,
    sigma: float | None,
) -> torch.Tensor:
    """1.0 where the phase does not follow ``model`` at ``point`` (the amplitude there the
    least-squares one along the demodulated echoes), else 0.0."""
    te = model.te
    theta = model.theta(point)
    along = torch.cos(theta) * data[0] + torch.sin(theta) * data[1]
    point = point.clone()
    point[0] = starts.amplitude_given_rate(along, te, point[1])
    state = model.evaluate(data, point, None)[0]
    im2, re2 = state[model.layout.cost + 1], state[model.layout.cost + 2]
    thresholds = phase_thresholds(te.shape[0], model.layout.blocks[1])
    energy = model.energy(data, None)
    return phase_fails(im2, re2, energy, thresholds, sigma, scale).to(te.dtype)
