"""The synthetic multi-echo BOLD runs the t2smap tests share, and their command lines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from t2starmap.sim.bold import BoldRun, make_bold_run, write_bold_run

#: A written run: the truth, its echo files, its brain mask.
Synthetic = tuple[BoldRun, list[Path], Path]


def written_run(
    factory: pytest.TempPathFactory, shape: tuple[int, int, int], n_volumes: int, seed: int
) -> Synthetic:
    run = make_bold_run(shape, n_volumes, seed=seed)
    folder = factory.mktemp("bold")
    return run, write_bold_run(folder, run), folder / "mask.nii.gz"


def t2smap_args(synthetic: Synthetic, out: Path, *extra: str) -> list[str]:
    """``t2smap``'s arguments for the run (echo times in s, its mask), quiet, then ``extra``."""
    run, paths, mask = synthetic
    return command_args(paths, run.te, mask, out, *extra)


def command_args(
    paths: Sequence[Path], te: Sequence[float], mask: Path, out: Path, *extra: str
) -> list[str]:
    """The arguments tedana's ``t2smap`` and ours both take (tedana's names), quiet, then
    ``extra`` (also for ``benchmarks/bench_t2smap.py``)."""
    return [
        "-d",
        *map(str, paths),
        "-e",
        *map(str, te),
        "--mask",
        str(mask),
        "--out-dir",
        str(out),
        "--quiet",
        *extra,
    ]
