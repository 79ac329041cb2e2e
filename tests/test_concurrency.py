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
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import pytest

from t2starmap.bids.validate import validate_bids
from t2starmap.sim.phantoms import write_bids_example

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
    return write_bids_example(
        root, dict.fromkeys(labels, (None,)), shape=shape, name="concurrency test"
    )


def app(bids: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "t2starmap", str(bids), str(out), *args]


def required_files(label: str) -> set[str]:
    """The maps the issue requires; the app may write more (its own output table decides)."""
    return {
        f"sub-{label}/anat/sub-{label}_{name}{ext}" for name in MAPS for ext in (".nii.gz", ".json")
    }


def pattern(files: set[str], label: str) -> set[str]:
    return {name.replace(f"sub-{label}", "sub-<L>") for name in files}


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
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for label, proc, output in zip(LABELS, procs, outputs, strict=True):
        assert proc.returncode == 0, f"sub-{label} exited {proc.returncode}:\n{output}"
    assert sorted(p.name for p in out.glob("sub-*") if p.is_dir()) == [f"sub-{x}" for x in LABELS]

    # Each job wrote exactly its participant's files, and the same set for everyone.
    first = participant_files(out, LABELS[0])
    assert required_files(LABELS[0]) <= first
    for label in LABELS:
        files = participant_files(out, label)
        assert pattern(files, label) == pattern(first, LABELS[0]), label
        for name in files:
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


@dataclass(frozen=True)
class Killed:
    """A participant job SIGKILLed while publishing, then re-run to completion."""

    out: Path
    work: Path
    published_after_kill: dict[str, Exception | None]  # final-named file -> why unreadable
    temporaries_after_kill: list[str]
    rerun: subprocess.CompletedProcess[str]


#: Tries at killing a participant job while it publishes: on a loaded machine the poller may
#: first run after the last map is published (then the kill proves nothing, and is retried).
KILL_TRIES = 4


def _kill_while_publishing(
    cmd: list[str], env: dict[str, str], out: Path
) -> dict[str, Exception | None]:
    """Start ``cmd``, SIGKILL it as soon as its participant folder appears (the first map is
    being written), and return every final-named file it left with why it is unreadable."""
    anat = out / "sub-01" / "anat"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not anat.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    published: dict[str, Exception | None] = {}
    for path in out.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            try:
                check_complete(path)
                published[str(path.relative_to(out))] = None
            except Exception as err:
                published[str(path.relative_to(out))] = err
    return published


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    tmp_path = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    # Big enough that publishing the maps takes a moment.
    bids = write_dataset(tmp_path / "bids", ("01",), (96, 96, 32))
    for attempt in range(KILL_TRIES):
        out, work = tmp_path / f"out{attempt}", tmp_path / f"work{attempt}"
        cmd = app(bids, out, "participant", "--participant-label", "01")
        cmd += ["--skip-bids-validation", "-w", str(work)]
        published = _kill_while_publishing(cmd, env, out)
        if not required_files("01") <= set(published):
            break  # killed mid-publication: what the tests below are about
    temporaries = [str(p.relative_to(out)) for p in temporary_files(out)]
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return Killed(out, work, published, temporaries, rerun)


def test_sigkill_mid_write_leaves_no_partial_file_under_a_final_name(killed: Killed) -> None:
    assert not (required_files("01") <= set(killed.published_after_kill)), (
        f"killed too late in {KILL_TRIES} tries: every map was already there"
    )
    broken = {name: err for name, err in killed.published_after_kill.items() if err}
    assert broken == {}


def test_rerun_after_sigkill_completes_and_validates(killed: Killed) -> None:
    assert killed.rerun.returncode == 0, killed.rerun.stderr
    out = killed.out
    files = participant_files(out, "01") - {str(p.relative_to(out)) for p in temporary_files(out)}
    assert required_files("01") <= files
    for name in files:
        check_complete(out / name)
    report = validate_bids(out)
    assert report.ok, [str(e) for e in report.errors]


def test_rerun_after_sigkill_leaves_no_temporary_files(killed: Killed) -> None:
    """The killed job's hidden '.<name>.<random>.tmp' files are partial files too: the re-run
    of the same participant must sweep them (only that participant's jobs write there)."""
    assert killed.rerun.returncode == 0, killed.rerun.stderr
    assert [str(p.relative_to(killed.out)) for p in temporary_files(killed.out)] == []
