"""Where and how a fit runs: the compute device, the voxels to fit, chunks and workers.

Every voxel-wise fit (:func:`t2starmap.fit.fit_t2star`, :func:`~t2starmap.fit.fit_complex`,
:func:`~t2starmap.fit.fit_corrected`) goes through :func:`run_chunks`: the voxels inside the
mask are taken in chunks of ``chunk_size``, each moved to the compute device in one copy and
handed to the fit's kernel, and the chunks' maps are written back in place. On the CPU,
``workers`` chunks are fitted at once, each in its own thread with ONE torch thread: torch's
own intra-op threads wait for each other at every operation and slow several-fold as soon as
another process wants a CPU, while one-thread chunk workers do not (measured in
``benchmarks/bench_busy.py``). The worker threads set their own torch thread count (a
per-thread setting in torch's OpenMP builds); the caller's count is left as it was, and put
back should a build make it process-wide.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

_T = TypeVar("_T")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The one place that picks the compute device: ``None``/``"auto"`` means CUDA when torch
    sees a GPU, else CPU. Asking for ``"cuda"`` without one is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return resolved


def default_workers() -> int:
    """Chunk workers when the caller names none: the CPUs this process may use (SLURM's
    allocation, the cgroup quota, the affinity; :func:`t2starmap.resources.available_cpus`)."""
    from t2starmap.resources import available_cpus

    return available_cpus(os.environ)[0]


@dataclass(frozen=True)
class Compute:
    """Where and how a fit runs, in one object; the maps do not depend on it (beyond the
    device's rounding). ``device``: see :func:`resolve_device`; ``dtype``: the compute
    precision (float32, or float64 for reference computations); ``chunk_size``: voxels per
    chunk (None: the fit's default for the device); ``workers``: chunks fitted at once on the
    CPU, each in a thread with one torch thread (None: :func:`default_workers`)."""

    device: str | torch.device | None = None
    dtype: torch.dtype = torch.float32
    chunk_size: int | None = None
    workers: int | None = None


@dataclass(frozen=True)
class Plan:
    """How one fit runs: the device, the compute dtype, voxels per chunk and chunk workers."""

    device: torch.device
    dtype: torch.dtype
    chunk_size: int
    workers: int


def plan(compute: Compute, defaults: tuple[int, int]) -> Plan:
    """Check what every fit shares and settle it: ``chunk_size`` None is the fit's
    ``defaults`` (CPU, CUDA) for the device; ``workers`` None is :func:`default_workers` on the
    CPU (a GPU runs one chunk at a time). Raises ValueError."""
    dtype, chunk_size, workers = compute.dtype, compute.chunk_size, compute.workers
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    dev = resolve_device(compute.device)
    if chunk_size is None:
        chunk_size = defaults[1] if dev.type == "cuda" else defaults[0]
    if dev.type != "cpu":
        workers = 1
    elif workers is None:
        workers = default_workers()
    return Plan(dev, dtype, chunk_size, workers)


@dataclass(frozen=True)
class Voxels:
    """The voxels of one or more signals (each (..., E), the same spatial shape) to fit:
    ``flat`` the signals as (n_voxels, E), ``index`` the flat indices inside the mask (None:
    every voxel), ``spatial`` the shape without the echo axis."""

    flat: tuple[torch.Tensor, ...]
    index: torch.Tensor | None
    spatial: tuple[int, ...]

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.spatial)) if self.spatial else 1

    @property
    def n_fit(self) -> int:
        return self.n_voxels if self.index is None else int(self.index.numel())

    def rows(
        self, start: int, stop: int, dev: torch.device, dtype: torch.dtype | None
    ) -> tuple[slice | torch.Tensor, tuple[torch.Tensor, ...]]:
        """Rows ``start:stop`` of the voxels to fit, each signal moved to ``dev`` (and
        ``dtype`` when given) in one copy, and where their results go (a slice, or indices on
        ``dev``)."""
        if self.index is None:
            return slice(start, stop), tuple(
                f[start:stop].to(device=dev, dtype=dtype) for f in self.flat
            )
        sel = self.index[start:stop]
        rows = tuple(f[sel.to(f.device)].to(device=dev, dtype=dtype) for f in self.flat)
        return sel.to(dev), rows


def voxels(
    signals: Sequence[np.ndarray | torch.Tensor],
    n_echoes: int,
    mask: np.ndarray | torch.Tensor | None,
) -> Voxels:
    """The voxels of ``signals`` inside ``mask`` ((...) bool; None: all). The first signal is
    (..., ``n_echoes``); the others share its spatial shape (any last axis: a known factor per
    echo, a start per voxel). Raises ValueError for an echo count or a shape that does not
    match."""
    data = [torch.as_tensor(s) for s in signals]
    first = data[0]
    if first.ndim < 1 or first.shape[-1] != n_echoes:
        raise ValueError(
            f"signal has {first.shape[-1] if first.ndim else 0} echoes on its last axis but "
            f"{n_echoes} echo times were given"
        )
    spatial = tuple(first.shape[:-1])
    for other in data[1:]:
        if tuple(other.shape[:-1]) != spatial:
            raise ValueError(f"shape {tuple(other.shape)} does not match {tuple(first.shape)}")
    n_vox = int(np.prod(spatial)) if spatial else 1
    index = None
    if mask is not None:
        inside = torch.as_tensor(mask).to(torch.bool).cpu()
        if tuple(inside.shape) != spatial:
            raise ValueError(f"mask shape {tuple(inside.shape)} does not match signal {spatial}")
        if not bool(inside.all()):  # without a mask no index list: it costs 8 bytes a voxel
            index = torch.nonzero(inside.reshape(-1)).reshape(-1)
    return Voxels(tuple(d.reshape(n_vox, d.shape[-1]) for d in data), index, spatial)


#: A kernel: the rows of one chunk (each (n, E) on the device) -> maps (n,) by name, and the
#: Failure bits (n,).
Kernel = Callable[[tuple[torch.Tensor, ...]], tuple[Mapping[str, torch.Tensor], torch.Tensor]]


def run_chunks(
    vox: Voxels, kernel: Kernel, keys: Sequence[str], how: Plan, *, cast: bool = True
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every chunk through ``kernel``; the maps ``keys`` (spatial shape, 0 outside the mask,
    the compute dtype on the device) and the Failure bits (uint8, 0 outside). ``cast``: move
    the rows to the compute dtype too (False: the kernel takes them as they are, e.g.
    complex). Each chunk gathers its rows and writes its maps back in its own worker (the
    chunks' voxels are disjoint): the calling thread does nothing per chunk, so nothing
    serial sits between the workers' fits."""
    dev, dtype = how.device, how.dtype
    out = {k: torch.zeros(vox.n_voxels, dtype=dtype, device=dev) for k in keys}
    reason = torch.zeros(vox.n_voxels, dtype=torch.uint8, device=dev)

    def fit_chunk(start: int) -> None:
        sel, rows = vox.rows(
            start, min(start + how.chunk_size, vox.n_fit), dev, dtype if cast else None
        )
        maps, bits = kernel(rows)
        for k in keys:
            out[k][sel] = maps[k]
        reason[sel] = bits.to(torch.uint8)

    for _ in map_chunks(fit_chunk, range(0, vox.n_fit, how.chunk_size), how.workers):
        pass
    return {k: v.reshape(vox.spatial) for k, v in out.items()}, reason.reshape(vox.spatial)


def map_chunks(func: Callable[[int], _T], starts: Sequence[int], workers: int) -> Iterator[_T]:
    """``func`` of every chunk start, in order; up to ``workers`` chunks at once in threads
    (torch releases the GIL in its kernels), each thread with one torch thread (see the
    module docstring). At most 2 chunks per worker in flight: memory stays bounded."""
    workers = min(workers, len(starts))
    if workers <= 1:
        yield from map(func, starts)
        return
    caller = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="t2starmap-fit", initializer=_one_thread
        ) as pool:
            pending: deque[Future[_T]] = deque()
            for start in starts:
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
                pending.append(pool.submit(func, start))
            while pending:
                yield pending.popleft().result()
    finally:
        if torch.get_num_threads() != caller:  # a build where the setting is process-wide
            torch.set_num_threads(caller)


def _one_thread() -> None:
    torch.set_num_threads(1)
