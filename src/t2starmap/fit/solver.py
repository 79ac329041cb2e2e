"""One batched Levenberg-Marquardt solver for every voxel-wise model. Pure torch, no I/O.

The solver knows nothing of T2*: a :class:`Model` gives, for a chunk of voxels, the cost, the
normal matrix J^T W J and the gradient J^T W r at a point, and the solver iterates the
damping. Voxels are the LAST axis of every tensor (echo-major data (E, n), points (P, n)).

The state of each voxel is one column of a (rows, n) tensor laid out by :class:`Layout`: the
point (P rows), the upper triangle of each diagonal block of J^T W J (row-major), the gradient
J^T W r (P rows), the cost r^T W r, then rows the model keeps for itself. One tensor, so that
keeping a step or gathering the voxels still iterating is one operation.

Tolerance policy (the same for every model): a voxel stops once the step it proposes, after
the bounds, is below :data:`TOL` in every parameter, each measured against that parameter's
scale max(|x| rel, floor) (the model's ``rel`` and ``floor``: relative for amplitudes and
rates, absolute radians for phases); it takes that small step without evaluating it and is
left alone from then on, so its result cannot depend on its neighbours. A step too small to
matter is then smaller than the parameter's own standard error by far (``tests/fit``
compare against float64 solutions run to :data:`TOL` / 1000). Each model has its own
iteration cap (``max_iter``: few for the 2-parameter decays, whose weighted log-linear start
is close; more for the complex model's phase); a voxel still moving at the cap is not
converged, unless its cost is at rounding level (noiseless data: nothing to improve).

Marquardt's damping: the diagonal of each block times (1 + lambda), lambda from
:data:`LAMBDA_START`, divided by 10 after a step that lowers the cost, times 10 otherwise; a
trial step is kept only where it lowers the cost (judged with the weights of the point it
starts from, for models that reweight). Each block is solved in closed form (1, 2 or 3
parameters; larger blocks by ``torch.linalg.solve_ex``); a singular block proposes no step.
Once half of the voxels still iterating have stopped, the others are gathered into smaller
tensors, so that the slow few do not keep the whole chunk busy.

Per-voxel flags are float 0/1 tensors combined by multiplication and applied with
``torch.lerp``: on the CPU torch's bool tensors are not vectorised (a ``torch.where`` on a bool
mask costs about 20 multiplications), and these are memory-bound loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from t2starmap.fit.lm_policy import (
    LAMBDA_MAX,
    LAMBDA_MIN,
    LAMBDA_START,
    ROUNDING,
    TOL,
)


@dataclass(frozen=True)
class Layout:
    """Where each part of a voxel's state sits: P parameters in diagonal blocks of the given
    sizes (in parameter order), and ``extra`` rows the model keeps after the cost."""

    blocks: tuple[int, ...]
    extra: int = 0

    @property
    def n_params(self) -> int:
        return sum(self.blocks)

    @property
    def normal(self) -> int:
        """First row of the normal-matrix entries."""
        return self.n_params

    @property
    def gradient(self) -> int:
        """First row of the gradient."""
        return self.n_params + sum(k * (k + 1) // 2 for k in self.blocks)

    @property
    def cost(self) -> int:
        return self.gradient + self.n_params

    @property
    def rows(self) -> int:
        return self.cost + 1 + self.extra

    def entry(self, block: int, i: int, j: int) -> int:
        """Row of entry (i, j), i <= j, of block ``block`` (indices within the block)."""
        row = self.normal + sum(k * (k + 1) // 2 for k in self.blocks[:block])
        k = self.blocks[block]
        return row + i * k - i * (i - 1) // 2 + (j - i)


class Model(Protocol):
    """What the solver needs of a model, for one chunk of voxels.

    ``layout``: its :class:`Layout`; ``low``, ``high``: (P, 1) bounds of the point (inf for
    none); ``rel``, ``floor``: (P, 1) the step scale max(|x| rel, floor); ``max_iter``: its
    iteration cap. :meth:`evaluate` returns the state at ``point`` (P, n), finite for every
    point within the bounds, the model's per-echo weights there (None for models that do
    not reweight), and the cost at ``point`` under ``weights`` (the weights of the point a
    trial starts from; the cost itself when None). :meth:`energy` is the data's sum of squares
    per voxel (n,), for the rounding-level test."""

    layout: Layout
    low: torch.Tensor
    high: torch.Tensor
    rel: torch.Tensor
    floor: torch.Tensor
    max_iter: int

    def evaluate(
        self, data: tuple[torch.Tensor, ...], point: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]: ...

    def energy(
        self, data: tuple[torch.Tensor, ...], weights: torch.Tensor | None
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Solution:
    """The solver's result for n voxels: ``state`` (rows, n) at each voxel's last accepted
    point, its point moved by the small step it stopped on; ``converged`` (n,) float 0/1."""

    layout: Layout
    state: torch.Tensor
    converged: torch.Tensor

    @property
    def point(self) -> torch.Tensor:
        return self.state[: self.layout.n_params]

    @property
    def cost(self) -> torch.Tensor:
        return self.state[self.layout.cost]

    def normal(self, block: int, i: int, j: int) -> torch.Tensor:
        """Entry (i, j) of diagonal block ``block`` of J^T W J, (n,)."""
        return self.state[self.layout.entry(block, min(i, j), max(i, j))]

    def extra(self, k: int) -> torch.Tensor:
        return self.state[self.layout.cost + 1 + k]


def lt(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """1.0 where a < b, else 0.0 (NaN: 0.0), in a's dtype."""
    return torch.lt(a, b, out=torch.empty_like(a))


def gt(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """1.0 where a > b, else 0.0 (NaN: 0.0), in a's dtype."""
    return torch.gt(a, b, out=torch.empty_like(a))


def tiny(like: torch.Tensor) -> float:
    return torch.finfo(like.dtype).tiny


def levenberg_marquardt(
    model: Model, data: tuple[torch.Tensor, ...], start: torch.Tensor
) -> Solution:
    """Minimise the model's cost in every voxel from ``start`` (P, n); ``data``: the chunk's
    tensors, voxels on their last axis (gathered with the voxels still iterating)."""
    layout = model.layout
    p = layout.n_params
    cost_row = layout.cost
    point = torch.nan_to_num(start, nan=0.0, posinf=0.0, neginf=0.0).clamp(model.low, model.high)
    state, weights, _ = model.evaluate(data, point, None)
    n = state.shape[1]
    lam = torch.full((n,), LAMBDA_START, dtype=state.dtype, device=state.device)
    converged = torch.zeros_like(lam)
    result = torch.empty((layout.rows + 1, n), dtype=state.dtype, device=state.device)
    active: torch.Tensor | None = None  # indices (into the chunk) of the voxels iterating

    def keep() -> None:
        """Write the iterating voxels' state and flags into ``result``."""
        if active is None:
            result[:-1].copy_(state)
            result[-1].copy_(converged)
        else:
            result[:-1].index_copy_(1, active, state)
            result[-1].index_copy_(0, active, converged)

    for _ in range(model.max_iter):
        here = state[:p]
        point = (here + _step(layout, state, lam)).clamp_(model.low, model.high)
        # A step this small is taken without evaluating it, and the voxel stops there.
        scale = torch.maximum(here.abs() * model.rel, model.floor)
        free = 1.0 - converged
        done = lt((point - here).abs_().div_(scale).amax(0), TOL).mul_(free)
        here.lerp_(point, done)
        converged = converged + done
        left = converged.numel() - int(converged.sum())
        if left == 0:
            break
        free = free.sub_(done)
        if 2 * left <= converged.numel():
            keep()
            still = torch.nonzero(converged < 0.5).reshape(-1)
            active = still if active is None else active.index_select(0, still)
            state, point, lam, converged, free = (
                x.index_select(-1, still) for x in (state, point, lam, converged, free)
            )
            data = tuple(x.index_select(-1, still) for x in data)
            if weights is not None:
                weights = weights.index_select(-1, still)
        trial, trial_weights, judged = model.evaluate(data, point, weights)
        better = lt(judged, state[cost_row]).mul_(free)
        state = state.lerp_(trial, better)
        if weights is not None and trial_weights is not None:
            weights = weights.lerp_(trial_weights, better)
        lam = lam.mul_(better.mul(-9.9).add_(10.0)).clamp_(LAMBDA_MIN, LAMBDA_MAX)
    else:
        # Out of iterations: a voxel whose cost is at rounding level has nothing to improve.
        floor = ROUNDING * model.energy(data, weights)
        converged = torch.maximum(converged, lt(state[cost_row], floor))
    keep()
    return Solution(layout, result[:-1], result[-1])


def _step(layout: Layout, state: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The damped Gauss-Newton step -(A + lambda diag A)^-1 g of every block, (P, n); 0 where
    a block is singular (or not finite)."""
    damp = lam + 1.0
    step = torch.empty((layout.n_params, state.shape[1]), dtype=state.dtype, device=state.device)
    first = 0
    for b, k in enumerate(layout.blocks):
        matrix = [
            [state[layout.entry(b, min(i, j), max(i, j))] for j in range(k)] for i in range(k)
        ]
        for i in range(k):
            matrix[i][i] = matrix[i][i] * damp
        gradient = state[layout.gradient + first : layout.gradient + first + k]
        step[first : first + k] = _solve(matrix, gradient)
        first += k
    return step.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _solve(m: list[list[torch.Tensor]], g: torch.Tensor) -> torch.Tensor:
    """-M^-1 g for a symmetric k x k M given entry by entry (each (n,)), g (k, n); 0 where M
    is singular. Closed forms for k <= 3."""
    k = len(m)
    if k == 1:
        return (-g[0] * gt(m[0][0], 0.0) / m[0][0].clamp_min(tiny(g)))[None]
    if k == 2:
        det = torch.addcmul(m[0][0] * m[1][1], m[0][1], m[0][1], value=-1.0)
        inv = gt(det, 0.0).div_(det.clamp_min(tiny(det)))
        out = torch.empty_like(g)
        torch.addcmul(m[0][1] * g[1], m[1][1], g[0], value=-1.0, out=out[0])
        torch.addcmul(m[0][1] * g[0], m[0][0], g[1], value=-1.0, out=out[1])
        return out.mul_(inv)
    if k == 3:
        # M symmetric: M^-1 = cofactors / det.
        cof = [
            [
                m[(i + 1) % 3][(j + 1) % 3] * m[(i + 2) % 3][(j + 2) % 3]
                - m[(i + 1) % 3][(j + 2) % 3] * m[(i + 2) % 3][(j + 1) % 3]
                for j in range(3)
            ]
            for i in range(3)
        ]
        det = m[0][0] * cof[0][0] + m[0][1] * cof[0][1] + m[0][2] * cof[0][2]
        inv = gt(det, 0.0).div_(det.clamp_min(tiny(det)))
        return torch.stack(
            [-(cof[i][0] * g[0] + cof[i][1] * g[1] + cof[i][2] * g[2]) * inv for i in range(3)]
        )
    dense = torch.stack([torch.stack(row, -1) for row in m], -2)  # (n, k, k)
    solved, info = torch.linalg.solve_ex(dense, g.T.unsqueeze(-1))
    return torch.where(info == 0, -solved.squeeze(-1).T, torch.zeros_like(g))
