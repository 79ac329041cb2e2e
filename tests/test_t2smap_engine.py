"""Which engine ``t2starmap t2smap`` fits with: ``curvefit`` on the CPU never loads torch (the
import alone costs more than the whole command's budget, ``benchmarks/bench_t2smap.py``);
the fits that need the torch solver still get it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from t2starmap.resources import gpu_possible
from t2starmap.workflows.t2smap import T2smapSettings, fit_device, needs_torch
from tests.support.bold import Synthetic, t2smap_args, written_run
from tests.support.files import REPO

_RUN = """
import sys
from t2starmap.cli.entry import run_t2smap
sys.argv = ["t2starmap-t2smap", *sys.argv[1:]]
try:
    run_t2smap()
except SystemExit as done:
    print("exit", done.code, "torch" in sys.modules)
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return written_run(tmp_path_factory, (10, 10, 6), 8, seed=3)


def _command(small: Synthetic, out: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, *t2smap_args(small, out, *extra)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_curvefit_on_the_cpu_never_imports_torch(small: Synthetic, tmp_path: Path) -> None:
    out = _command(small, tmp_path / "a", "--fittype", "curvefit", "--device", "cpu")
    assert out == "exit 0 False"
    assert (tmp_path / "a" / "T2starmap.nii.gz").is_file()
    # --device auto: torch only where a GPU may be there to use
    out = _command(small, tmp_path / "b", "--fittype", "curvefit")
    assert out == f"exit 0 {gpu_possible()}"


def test_the_torch_solver_still_runs_nlls(small: Synthetic, tmp_path: Path) -> None:
    assert _command(small, tmp_path, "--fittype", "nlls", "--device", "cpu") == "exit 0 True"


def _settings(fittype: str, fitmode: str = "all", device: str = "cpu") -> T2smapSettings:
    return T2smapSettings(
        data=(Path("e1.nii.gz"), Path("e2.nii.gz")), tes=(0.01, 0.02), out_dir=Path("out"),
        prefix="", convention="bids", verbose=False, overwrite=False, mask=None,
        masktype=("dropout",), dummy_scans=0, exclude=(), fittype=fittype, fitmode=fitmode,
        combmode="t2s", workers=1, device=device, command="t2smap",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fittype", "fitmode", "device", "torch"),
    [
        ("loglin", "all", "cpu", False),
        ("loglin", "ts", "cuda", False),
        ("curvefit", "all", "cpu", False),
        ("curvefit", "all", "cuda", True),
        ("curvefit", "ts", "cpu", True),
        ("nlls", "all", "cpu", True),
    ],
)
def test_which_runs_load_torch(fittype: str, fitmode: str, device: str, torch: bool) -> None:
    assert needs_torch(_settings(fittype, fitmode, device)) is torch


def test_a_phase_fit_loads_torch() -> None:
    assert needs_torch(replace(_settings("curvefit"), phase=(Path("p.nii.gz"),)))


def test_auto_is_the_cpu_without_an_nvidia_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not gpu_possible(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert gpu_possible(tmp_path)
    assert not gpu_possible(tmp_path / "absent")
    monkeypatch.setattr("t2starmap.workflows.t2smap.gpu_possible", lambda: False)
    assert fit_device("auto") == "cpu" and fit_device("cuda") == "cuda"
    monkeypatch.setattr("t2starmap.workflows.t2smap.gpu_possible", lambda: True)
    assert fit_device("auto") == "auto" and fit_device("cpu") == "cpu"
