"""The models the solver fits: residual, normal matrix and gradient for a chunk of voxels.

Pure torch, no I/O. Each model is a small object made for one chunk (its echo times on the
chunk's device); the data it fits are passed to :meth:`evaluate` as a tuple of tensors with
the voxels on their last axis (the solver gathers them). Echo-major: (E, n), echoes
ascending. See :mod:`t2starmap.fit.solver` for the state layout and the tolerance policy.

:class:`Exponential` covers every magnitude fit: the cost sum_k w_k (p g_k exp(-tau_k R2*) -
z_k)^2 over (p, R2*), with

* the Gaussian fit of the magnitude: z = M, tau = TE, w = 1, g = 1;
* the noise-aware fit (Rician, noncentral chi of L coils): z = M^2 - 2 L sigma^2, p = S0^2,
  tau = 2 TE, reweighted w = 1 / (p g exp(-tau R2*) + L sigma^2) = 4 sigma^2 / Var(M^2)
  (IRLS: the weights are those of the last accepted point);
* either of them times a known per-echo factor g (the through-slice dephasing |F(TE)|, or
  |F|^2 for the noise-aware fit; g = 0 leaves an echo out, and its z must be 0 too).

:class:`Complex` is S(TE) = S0 exp(-TE R2*) exp(i (phi0 + omega TE [+ psi on even echoes])) on
the real and imaginary parts; with the demodulated data d_k = exp(-i theta_k) x_k the normal
matrix is exactly block-diagonal: (S0, R2*) sees Re d_k against the decay, the phases
(phi0, omega[, psi]) see Im d_k weighted by the decay. ``bipolar`` frees psi, the phase offset
of the even echoes (2nd, 4th, ...) of a bipolar read-out.
"""

from __future__ import annotations

import torch

from t2starmap.fit.lm_policy import AMPLITUDE_MAX, R2_MAX
from t2starmap.fit.solver import Layout

_INF = float("inf")


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]


class Exponential:
    """p g exp(-tau R2*) against z, over (p, R2*). ``tau`` (E, 1). Data: (-z (E, n), then g
    (E, n) when ``factor``, then L sigma^2 in each voxel's units (n,) when ``noise_aware``)."""

    layout = Layout((2,))
    #: Rows of the state: the point, J^T W J, J^T W r and the cost.
    P, R2, A11, A12, A22, G1, G2, COST = range(8)

    def __init__(
        self, tau: torch.Tensor, *, factor: bool, noise_aware: bool, max_iter: int = 10
    ) -> None:
        self.neg_tau = -tau
        self.factor = factor
        self.noise_aware = noise_aware
        self.max_iter = max_iter
        self.low = _column([-AMPLITUDE_MAX, 0.0], tau)
        self.high = _column([AMPLITUDE_MAX, R2_MAX], tau)
        self.rel = _column([1.0, 1.0], tau)
        self.floor = _column([1e-12, 1.0], tau)

    def _parts(
        self, data: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        neg_z = data[0]
        g = data[1] if self.factor else None
        noise_var = data[-1] if self.noise_aware else None
        return neg_z, g, noise_var

    def evaluate(
        self, data: tuple[torch.Tensor, ...], point: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The state at ``point`` in one pass over the echoes (in place where a temporary is
        not needed again: fewer echo-by-voxel arrays in the caches)."""
        neg_z, g, noise_var = self._parts(data)
        p, r2 = point[0], point[1]
        f = torch.mul(self.neg_tau, r2).exp_()  # d model / d p
        if g is not None:
            f = f.mul_(g)
        r = torch.addcmul(neg_z, f, p)  # model - data
        w = None
        if noise_var is None:
            wf = f
        else:
            w = torch.addcmul(noise_var, f, p.clamp_min(0.0)).reciprocal_()
            wf = w * f
        state = torch.empty((8, p.numel()), dtype=p.dtype, device=p.device)
        state[:2] = point
        moment = wf * f  # w f^2, then times -tau, then times tau^2
        torch.sum(moment, 0, out=state[self.A11])
        torch.mul(p, moment.mul_(self.neg_tau).sum(0), out=state[self.A12])
        torch.mul(p * p, moment.mul_(self.neg_tau).sum(0), out=state[self.A22])
        wf.mul_(r)  # w f r (f itself is not needed any more)
        torch.sum(wf, 0, out=state[self.G1])
        torch.mul(p, wf.mul_(self.neg_tau).sum(0), out=state[self.G2])
        rr = r.mul_(r)
        torch.sum(rr if w is None else w * rr, 0, out=state[self.COST])
        judged = state[self.COST] if weights is None else (weights * rr).sum(0)
        return state, w, judged

    def energy(self, data: tuple[torch.Tensor, ...], weights: torch.Tensor | None) -> torch.Tensor:
        zz = data[0] * data[0]
        return (zz if weights is None else weights * zz).sum(0)


class Complex:
    """S0 exp(-TE R2*) exp(i theta), theta = phi0 + omega TE (+ psi on the even echoes when
    ``bipolar``), fitted to x = (Re, Im) (E, n) each. ``te`` (E, 1) ascending. Point (S0, R2*,
    phi0, omega[, psi]); S0 may go negative (the same model as -S0 with phi0 + pi). Extra state
    rows: sum (Im d)^2 (the residual across the model, the part the phase must explain) and
    sum (Re d - a)^2 (the residual along it)."""

    def __init__(self, te: torch.Tensor, *, bipolar: bool = False, max_iter: int = 50) -> None:
        self.te = te
        self.bipolar = bipolar
        self.max_iter = max_iter
        self.layout = Layout((2, 3) if bipolar else (2, 2), extra=2)
        self.even = (torch.arange(te.shape[0], device=te.device) % 2 == 1).to(te.dtype)[:, None]
        phases = 3 if bipolar else 2
        self.low = _column([-AMPLITUDE_MAX, 0.0] + [-_INF] * phases, te)
        self.high = _column([AMPLITUDE_MAX, R2_MAX] + [_INF] * phases, te)
        self.rel = _column([1.0, 1.0] + [0.0] * phases, te)
        span = float(te[-1, 0])
        self.floor = _column([1e-12, 1.0, 1.0, 1.0 / max(span, 1e-12)] + [1.0] * (phases - 2), te)

    def theta(self, point: torch.Tensor) -> torch.Tensor:
        """The model's phase at each echo, (E, n)."""
        theta = point[2] + self.te * point[3]
        if self.bipolar:
            theta = theta + self.even * point[4]
        return theta

    def evaluate(
        self, data: tuple[torch.Tensor, ...], point: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The state at ``point``. The phase block's sums are the magnitude block's times S0^2
        (a = S0 e)."""
        x_re, x_im = data
        te = self.te
        s0, r2 = point[0], point[1]
        e = torch.exp(-te * r2)
        theta = self.theta(point)
        c, s = torch.cos(theta), torch.sin(theta)
        d_im = c * x_im - s * x_re  # Im(exp(-i theta) x); the residual across the model is -d_im
        rho_re = s0 * e - (c * x_re + s * x_im)  # a - Re(exp(-i theta) x), along the model
        re2 = (rho_re * rho_re).sum(0)
        im2 = (d_im * d_im).sum(0)
        ee = e * e
        tee = te * ee
        m0, m1, m2 = ee.sum(0), tee.sum(0), (te * tee).sum(0)
        e_re, e_im = e * rho_re, e * d_im
        s0s0 = s0 * s0
        rows = [point, m0[None], (-s0 * m1)[None], (s0s0 * m2)[None]]
        if self.bipolar:
            even_ee, even_tee = (self.even * ee).sum(0), (self.even * tee).sum(0)
            phase = [m0, m1, even_ee, m2, even_tee, even_ee]  # (phi, omega, psi) upper triangle
        else:
            phase = [m0, m1, m2]
        rows += [(s0s0 * v)[None] for v in phase]
        gradient = [e_re.sum(0), -s0 * (te * e_re).sum(0)]
        gradient += [-s0 * e_im.sum(0), -s0 * (te * e_im).sum(0)]
        if self.bipolar:
            gradient.append(-s0 * (self.even * e_im).sum(0))
        rows += [v[None] for v in gradient]
        rows += [(re2 + im2)[None], im2[None], re2[None]]
        state = torch.cat(rows).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return state, None, state[self.layout.cost]

    def energy(self, data: tuple[torch.Tensor, ...], weights: torch.Tensor | None) -> torch.Tensor:
        return (data[0] * data[0] + data[1] * data[1]).sum(0)
