"""What the slice-profile estimate (:mod:`t2starmap.b0.profile_fit`) reports: the best member
of each family searched, and the choice between them with its uncertainty and reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from t2starmap.b0.profiles import TBW_RANGE, WIDTH_RANGE, SliceProfile

__all__ = ["FamilyFit", "ProfileEstimate"]


@dataclass(frozen=True)
class FamilyFit:
    """One family's search in :func:`estimate_slice_profile`.

    family: "sinc" (parameter: the time-bandwidth product N, searched as v = 1/N^2; v = 0 is
    the rectangle, N = inf) or "gaussian" (parameter: the FWHM W in slice thicknesses,
    searched as v = W^2). grid, cost: (n,) the v tried and the set-wide reduced chi-square at
    each. value, value_sd: v at the minimum (parabola through the lowest grid point and its
    neighbours) and its SD from a bootstrap over voxels; value_sd_curvature: the SD the
    curvature of the chi-square gives, scaled by the reduced chi-square when that exceeds 1.
    parameter, parameter_sd: N or W, SD by the delta method. reduced_chi2: at the minimum.
    at_edge: the minimum is on an end of the grid that is not a family member's limit (the
    smooth end for sinc, either end for gaussian): the truth may lie beyond."""

    family: str
    grid: np.ndarray
    cost: np.ndarray
    value: float
    value_sd: float
    value_sd_curvature: float
    parameter: float
    parameter_sd: float
    reduced_chi2: float
    at_edge: bool

    def profile(self) -> SliceProfile:
        """The member found (source "estimated"); sinc beyond N = 30 is the rectangle."""
        origin = f"{self.family} family, {self.parameter:.3g} +- {self.parameter_sd:.2g}"
        if self.family == "gaussian":
            width = min(max(self.parameter, WIDTH_RANGE[0]), WIDTH_RANGE[1])
            return SliceProfile("gaussian", width, source="estimated", origin=origin)
        if self.parameter > TBW_RANGE[1]:
            return SliceProfile("rect", source="estimated", origin=origin)
        tbw = max(self.parameter, TBW_RANGE[0])
        return SliceProfile("sinc", tbw, source="estimated", origin=origin)


@dataclass(frozen=True)
class ProfileEstimate:
    """:func:`estimate_slice_profile`'s result.

    profile: the estimated profile (source "estimated") or, on a fallback, the default
    (source "default", the reason as its origin). chosen: the family kept (lowest reduced
    chi-square), None on a fallback; fits: every family searched (empty when it fell back
    before fitting); support: the fraction of the bootstrap resamplings in which the chosen
    family also has the lowest cost (None with one family). n_voxels: voxels used;
    fallback_reason: why the default was taken, else None."""

    profile: SliceProfile
    chosen: FamilyFit | None
    fits: tuple[FamilyFit, ...]
    support: float | None
    n_voxels: int
    fallback_reason: str | None

    @property
    def tbw(self) -> float | None:
        """The estimated time-bandwidth product (inf: the rectangle), when sinc was chosen."""
        return self.chosen.parameter if self.chosen and self.chosen.family == "sinc" else None

    @property
    def tbw_sd(self) -> float | None:
        """Its standard uncertainty (bootstrap over voxels), when sinc was chosen."""
        return self.chosen.parameter_sd if self.chosen and self.chosen.family == "sinc" else None

    def describe(self) -> str:
        """One line for the sidecar."""
        if self.chosen is None:
            return f"{self.profile.spec()} (default: {self.fallback_reason})"
        c = self.chosen
        if c.family == "sinc" and c.value <= 0:
            found = f"the rectangle end of the sinc family (1/N^2 = 0, SD {c.value_sd:.2g})"
        else:
            name = "time-bandwidth product" if c.family == "sinc" else "FWHM / thickness"
            found = f"{c.family} family, {name} {c.parameter:.3g} +- {c.parameter_sd:.2g}"
        support = "" if self.support is None else f"; family kept in {self.support:.0%}"
        edge = "; at the end of the searched range" if c.at_edge else ""
        return (
            f"{self.profile.spec()} estimated from {self.n_voxels} strong-gradient voxels: "
            f"{found} (SD: bootstrap over voxels{support}), reduced chi-square "
            f"{c.reduced_chi2:.3g}{edge}"
        )
