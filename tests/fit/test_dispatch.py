"""Where and how a fit runs: devices, chunks, and one-torch-thread chunk workers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from t2starmap.fit import NoiseModel, dispatch, fit_t2star
from t2starmap.sim.phantoms import make_phantom


def test_workers_each_run_one_torch_thread_and_leave_the_callers_alone() -> None:
    seen: dict[str, int] = {}

    def chunk(start: int) -> int:
        seen[threading.current_thread().name] = torch.get_num_threads()
        return start

    before = torch.get_num_threads()
    assert list(dispatch.map_chunks(chunk, range(0, 40, 4), 3)) == list(range(0, 40, 4))
    assert torch.get_num_threads() == before
    workers = {k: v for k, v in seen.items() if k.startswith("t2starmap-fit")}
    assert workers and set(workers.values()) == {1}


def test_api_default_workers_are_the_cpus_the_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert dispatch.default_workers() == 3
    how = dispatch.plan(dispatch.Compute("cpu"), (100, 1000))
    assert (how.workers, how.chunk_size) == (3, 100)
    assert dispatch.plan(dispatch.Compute("cpu", chunk_size=7, workers=1), (100, 1000)).workers == 1


def test_fit_t2star_without_workers_uses_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = dispatch.map_chunks

    def recording(func, starts, workers):  # type: ignore[no-untyped-def]
        calls.append(workers)
        return original(func, starts, workers)

    monkeypatch.setattr(dispatch, "map_chunks", recording)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    ph = make_phantom((10, 10, 2), seed=1)
    fit_t2star(ph.magnitude, ph.echo_times, noise=NoiseModel(sigma=ph.sigma))
    assert calls == [2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be positive"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"dtype": torch.float16}, "dtype must be"),
    ],
)
def test_plan_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dispatch.plan(dispatch.Compute(device="cpu", **kwargs), defaults=(1, 1))  # type: ignore[arg-type]


def test_voxels_inside_the_mask_in_chunks() -> None:
    signal = np.arange(24.0).reshape(2, 3, 4)
    mask = np.array([[True, False, True], [False, False, True]])
    vox = dispatch.voxels([signal, signal[..., :1]], 4, mask)
    assert vox.n_fit == 3 and vox.spatial == (2, 3)
    sel, rows = vox.rows(1, 3, torch.device("cpu"), torch.float64)
    assert isinstance(sel, torch.Tensor) and sel.tolist() == [2, 5]
    assert rows[0][:, 0].tolist() == [8.0, 20.0] and rows[1].shape == (2, 1)
    everything = dispatch.voxels([signal], 4, np.ones((2, 3), bool))
    assert everything.index is None  # no index list when every voxel is fitted
    with pytest.raises(ValueError, match="mask shape"):
        dispatch.voxels([signal], 4, np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="echo times"):
        dispatch.voxels([signal], 5, None)
