"""Many participant jobs, one OUTPUT_DIR: what SLURM array jobs do to the output folder.

Real processes (``python -m t2starmap``), not threads: four participants at once into one
output folder, then the output must validate and hold exactly each participant's files; and a
job killed with SIGKILL while it publishes must leave no partial file under a final name, and a
re-run must complete cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest

from t2starmap.simulate import EXAMPLE_ECHO_TIMES, make_phantom, write_megre
from t2starmap.validate import validate_bids

pytestmark = pytest.mark.slow

LABELS = ("01", "02", "03", "04")
MAPS = (
    "T2starmap",
    "R2starmap",
    "S0map",
    "desc-rmse_statmap",
    "desc-signal_mask",
    "desc-failed_mask",
)


def write_dataset(root: Path, labels: tuple[str, ...], shape: tuple[int, ...]) -> Path:
    """A raw BIDS dataset with one MEGRE echo set per participant."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "concurrency test",
                "BIDSVersion": "1.10.0",
                "DatasetType": "raw",
                "Authors": ["t2starmap tests"],
            }
        )
        + "\n"
    )
    (root / "README").write_text("Synthetic multi-echo GRE data for the concurrency tests.\n")
    for k, label in enumerate(labels, start=1):
        write_megre(root, make_phantom(shape, EXAMPLE_ECHO_TIMES, snr=60.0, seed=k), label)
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{label}\n" for label in labels)
    )
    return root


def app(bids: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "t2starmap", str(bids), str(out), *args]


def expected_files(label: str) -> set[str]:
    return {
        f"sub-{label}/anat/sub-{label}_{name}{ext}" for name in MAPS for ext in (".nii.gz", ".json")
    }


def participant_files(out: Path, label: str) -> set[str]:
    folder = out / f"sub-{label}"
    return {str(p.relative_to(out)) for p in folder.rglob("*") if p.is_file()}


def temporary_files(root: Path) -> list[Path]:
    """What atomic writes leave behind when killed: hidden '.<name>.<random>.tmp...' files."""
    return [p for p in root.rglob(".*") if p.is_file() and ".tmp" in p.name]


def check_complete(path: Path) -> None:
    """Every image loads in full, every JSON parses."""
    if path.name.endswith(".nii.gz"):
        nib.load(path).get_fdata()
    elif path.suffix in (".json",):
        json.loads(path.read_text())


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """One CPU thread each, as a 1-CPU SLURM task would have; no terminal progress bars."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}


def test_four_participants_at_once_into_one_output(tmp_path: Path, env: dict[str, str]) -> None:
    bids = write_dataset(tmp_path / "bids", LABELS, (24, 24, 6))
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            app(
                bids,
                out,
                "participant",
                "--participant-label",
                label,
                "--nprocs",
                "1",
                "--skip-bids-validation",
                "-w",
                str(tmp_path / f"work-{label}"),
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for label in LABELS
    ]
    results = [(p.wait(timeout=300), p.stdout.read() if p.stdout else "") for p in procs]
    for label, (code, output) in zip(LABELS, results, strict=True):
        assert code == 0, f"sub-{label} exited {code}:\n{output}"

    for label in LABELS:
        assert participant_files(out, label) == expected_files(label)
        for name in expected_files(label):
            check_complete(out / name)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert (out / ".bidsignore").read_text().strip()
    logs = sorted((out / "logs").glob("*.json"))
    assert len(logs) >= len(LABELS), [p.name for p in logs]
    for log in logs:
        json.loads(log.read_text())
    assert temporary_files(out) == []
    for label in LABELS:  # -w scratch cleaned by each job
        assert list((tmp_path / f"work-{label}").glob("*")) == []

    report = validate_bids(out)
    assert report.ok, [str(e) for e in report.errors]

    # The group level sees all four.
    group = subprocess.run(
        app(bids, out, "group"), env=env, capture_output=True, text=True, timeout=300
    )
    assert group.returncode == 0, group.stderr
    rows = (out / "group_T2starmap.tsv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(LABELS)


def test_sigkill_mid_write_leaves_no_partial_files_and_rerun_completes(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # Big enough that publishing the maps takes a moment.
    bids = write_dataset(tmp_path / "bids", ("01",), (96, 96, 32))
    out = tmp_path / "out"
    anat = out / "sub-01" / "anat"
    cmd = app(
        bids,
        out,
        "participant",
        "--participant-label",
        "01",
        "--skip-bids-validation",
        "-w",
        str(tmp_path / "work"),
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # The participant folder appears when the first map is being written: kill right then.
    deadline = time.monotonic() + 240
    while not anat.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    published = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(published) < len(expected_files("01")) + 3, "killed too late: nothing to test"
    for path in published:  # whatever carries a final name is whole
        check_complete(path)

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert participant_files(out, "01") - {
        str(p.relative_to(out)) for p in temporary_files(out)
    } == expected_files("01")
    for name in expected_files("01"):
        check_complete(out / name)
    report = validate_bids(out)
    assert report.ok, [str(e) for e in report.errors]
