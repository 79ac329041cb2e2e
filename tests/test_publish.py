"""One page's publication: all of its files in place, or none (what was there restored)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from t2starmap.bids.publish import Publication, publish
from t2starmap.errors import OutputError
from tests.support.files import checksums


def staged(root: Path, names: dict[str, str]) -> tuple[tuple[Path, str], ...]:
    files = []
    for name, text in names.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        files.append((path, name))
    return tuple(files)


def test_files_appear_replace_and_stale_ones_go(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub-01" / "anat").mkdir(parents=True)
    (out / "sub-01" / "anat" / "old_map.nii.gz").write_text("old map")
    (out / "sub-01" / "anat" / "a.json").write_text("old a")
    files = staged(tmp_path / "stage", {"sub-01/anat/a.json": "new a", "sub-01.html": "page"})
    publish(out, Publication("sub-01", files, ("sub-01/anat/old_map.nii.gz", "not/there")))
    assert checksums(out).keys() == {"sub-01/anat/a.json", "sub-01.html"}
    assert (out / "sub-01" / "anat" / "a.json").read_text() == "new a"
    assert not [p for p in out.rglob(".*")]  # nothing moved aside is left


def test_a_failed_write_undoes_the_whole_publication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third file cannot be written (a full disk): the two written are removed, the one
    replaced is back, the folders created are gone, and the error says so (exit 73)."""
    out = tmp_path / "out"
    (out / "sub-01").mkdir(parents=True)
    (out / "sub-01" / "kept.json").write_text("earlier run")
    (out / "sub-01" / "stale.json").write_text("earlier run, stale")
    before = checksums(out)
    files = staged(
        tmp_path / "stage",
        {
            "sub-01/kept.json": "new",
            "sub-01/ses-1/anat/x.nii.gz": "map",
            "sub-01/ses-1/anat/x_record.json": "record",
            "sub-01.html": "page",
        },
    )
    real = shutil.copyfile
    calls = []

    def full_disk(source: Path, target: Path) -> object:
        calls.append(source)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(OutputError, match=r"No space left on device.*removed again"):
        publish(out, Publication("sub-01", files, ("sub-01/stale.json",)))
    assert checksums(out) == before
    assert not (out / "sub-01" / "ses-1").exists()
    assert not [p for p in out.rglob(".*")]


def test_ctrl_c_during_a_publication_waits_for_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT while the second of three files is copied: all three are in place, then
    KeyboardInterrupt."""
    import os
    import signal

    out = tmp_path / "out"
    files = staged(tmp_path / "stage", {"a.json": "a", "b.json": "b", "c.html": "c"})
    real = shutil.copyfile
    calls = []

    def copy_then_ctrl_c(source: Path, target: Path) -> object:
        calls.append(source)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(source, target)

    monkeypatch.setattr(shutil, "copyfile", copy_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        publish(out, Publication("sub-01", files))
    assert checksums(out).keys() == {"a.json", "b.json", "c.html"}


def test_a_shared_files_temporaries_are_not_swept_as_stale(tmp_path: Path) -> None:
    """Runs of other participants write ``dataset_description.json`` into the same output at
    the same time: a temporary file beside it may be theirs, in flight, and must survive
    (removing it made a concurrent run fail with exit 73). A participant's own file's
    temporaries are left by a killed run of that participant, and go."""
    out, stage = tmp_path / "out", tmp_path / "stage"
    (out / "sub-01").mkdir(parents=True)
    stage.mkdir()
    for name in ("dataset_description.json", "own.json"):
        (stage / name).write_text("{}")
    in_flight = out / ".dataset_description.json.abcd1234.tmp.json"
    in_flight.write_text("another run's")
    stale = out / "sub-01" / ".own.json.abcd1234.tmp.json"
    stale.write_text("a killed run's")
    files = (
        (stage / "dataset_description.json", "dataset_description.json"),
        (stage / "own.json", "sub-01/own.json"),
    )
    publish(out, Publication("sub-01", files, shared=frozenset({"dataset_description.json"})))
    assert in_flight.read_text() == "another run's"
    assert not stale.exists()
    assert (out / "dataset_description.json").read_text() == "{}"


def test_the_shared_files_names_are_the_files_written(tmp_path: Path) -> None:
    """The names a publication keeps from its sweep are those the runs write at the root."""
    from t2starmap.bids.dataset_files import SHARED_FILES, shared_files
    from t2starmap.sim.phantoms import write_bids_example

    bids = write_bids_example(tmp_path / "bids", {"01": (None,)}, shape=(4, 4, 3))
    assert tuple(shared_files(bids)) == SHARED_FILES
