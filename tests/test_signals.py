"""Ctrl-C and SIGTERM sent for real to a participant run (``python -m t2starmap`` in a
subprocess) at five points: validation, fit, writing the maps, drawing the report, publishing.

Each run fits two participants; the signal is sent the moment the run's log says it reached
the point for the first one (a thread reads its stderr: the signal follows the log line by a
few milliseconds, whatever the machine's speed). Whatever moment it lands in, the output must
hold complete echo sets only: every record's maps and sidecars readable, its page there and
showing it, no temporary file, no empty folder; nothing at all when nothing was published (an
output folder the run created is gone); and the exit code 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from t2starmap.bids.nifti import read_map
from t2starmap.sim.phantoms import write_bids_example
from tests.support.files import checksums

pytestmark = pytest.mark.slow

#: The log line (of sub-01) at which each point is reached.
POINTS = {
    "validation": "validating ",
    "fit": "sub-01: fitting",
    "write": "sub-01: writing its maps",
    "report": "sub-01: drawing its report",
    "publish": "sub-01: publishing",
}
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two participants of 64x64x16 voxels and 8 echoes: each step takes a moment."""
    root = tmp_path_factory.mktemp("signals") / "bids"
    return write_bids_example(
        root, {"01": (None,), "02": (None,)}, shape=(64, 64, 16), name="signals test"
    )


@dataclass(frozen=True)
class Stopped:
    code: int
    stderr: str
    signalled: bool


def run_and_signal(bids: Path, out: Path, work: Path, point: str, signum: int) -> Stopped:
    """Run the participant level; send ``signum`` when the log reaches ``point``."""
    command = [sys.executable, "-m", "t2starmap", str(bids), str(out), "participant"]
    command += ["--nprocs", "1", "-w", str(work)]
    if point != "validation":
        command.append("--skip-bids-validation")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lines: list[str] = []
    sent = threading.Event()
    with subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:

        def watch() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if not sent.is_set() and POINTS[point] in line:
                    proc.send_signal(signum)
                    sent.set()

        reader = threading.Thread(target=watch)
        reader.start()
        code = proc.wait(timeout=300)
        reader.join(timeout=30)
    return Stopped(code, "".join(lines), sent.is_set())


def check_complete(out: Path, work: Path) -> list[str]:
    """The published sets (names), after checking that each is complete with its page and
    that nothing else is left: no temporary file, no empty folder, no staging folder."""
    assert not work.exists() or list(work.iterdir()) == [], "staging folder left"
    if not out.exists():
        return []
    assert [p for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())] == []
    assert [p for p in out.rglob(".*") if ".tmp" in p.name] == []
    names = []
    for path in sorted(out.rglob("*_record.json")):
        record = json.loads(path.read_text())
        for image in record["files"].values():
            assert read_map(out / image).size > 0, image
            json.loads((out / image.replace(".nii.gz", ".json")).read_text())
        subject = record["entities"]["subject"]
        page = (out / f"sub-{subject}.html").read_text()
        name = path.name.removesuffix("_record.json")
        assert f'id="{name}"' in page, f"{name} published without its page"
        names.append(name)
    pages = sorted(p.name for p in out.glob("sub-*.html"))
    assert pages == [f"{n}.html" for n in names], "a page without its set"
    assert (out / "dataset_description.json").is_file()
    return names


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_leaves_complete_sets_only(
    dataset: Path, tmp_path: Path, point: str, signum: int
) -> None:
    before = checksums(dataset)
    out, work = tmp_path / "out", tmp_path / "work"
    stopped = run_and_signal(dataset, out, work, point, signum)
    assert stopped.signalled, f"the run never reached {point}:\n{stopped.stderr}"
    assert stopped.code == CODES[signum], stopped.stderr
    assert "Traceback" not in stopped.stderr
    published = check_complete(out, work)
    assert "sub-02" not in published  # stopped before the second participant was published
    if point in ("validation", "fit"):  # long enough for the signal to land in them
        assert not out.exists(), "an output folder from a run that published nothing"
    if point == "publish":  # the log line is written once signals are held: it goes through
        assert published == ["sub-01"]
    if published:
        assert "published complete before it: sub-01" in stopped.stderr
    assert checksums(dataset) == before


def test_a_signal_during_a_rerun_keeps_the_earlier_outputs_whole(
    dataset: Path, tmp_path: Path
) -> None:
    """A rerun into a complete output, stopped while it publishes: every set is complete,
    the earlier one or the new one, never a mix; sub-02's earlier outputs are untouched."""
    out, work = tmp_path / "out", tmp_path / "work"
    command = [sys.executable, "-m", "t2starmap", str(dataset), str(out), "participant"]
    first = subprocess.run(
        [*command, "--skip-bids-validation", "--nprocs", "1", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    sub02 = checksums(out / "sub-02")
    stopped = run_and_signal(dataset, out, work, "publish", signal.SIGTERM)
    assert stopped.code == 143, stopped.stderr
    assert check_complete(out, work) == ["sub-01", "sub-02"]
    assert checksums(out / "sub-02") == sub02
