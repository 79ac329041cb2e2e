"""A whole run on the bundled example against the outputs recorded in ``tests/data/reference_run``.

Catches any unintended change of what the app publishes: the file list, every sidecar and
table, and every map's contents and geometry. When a change is meant (say, a better noise
estimate), regenerate the reference and say why in the commit:
``python tests/test_reference_run.py --update``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "reference_run"
EXAMPLE = REPO / "bids_example"
#: Written by every run but not compared: they carry times, paths and dates.
VOLATILE_SUFFIXES = (".html",)
VOLATILE_DIRS = ("logs",)
#: Fields of the records that depend on the machine and the moment.
VOLATILE_RECORD_FIELDS = ("seconds", "steps", "software")


def published_files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.endswith(VOLATILE_SUFFIXES)
        and p.relative_to(root).parts[0] not in VOLATILE_DIRS
    }


def run_example(out: Path) -> None:
    from t2starmap.cli.run import main

    for level in ("participant", "group"):
        assert main([str(EXAMPLE), str(out), level, "--skip-bids-validation", "-q"]) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    run_example(out)
    return out


def test_same_files_as_the_reference(run: Path) -> None:
    assert published_files(run) == published_files(REFERENCE)


@pytest.mark.parametrize("name", sorted(published_files(REFERENCE)))
def test_same_contents_as_the_reference(run: Path, name: str) -> None:
    ours, theirs = run / name, REFERENCE / name
    if name.endswith(".nii.gz"):
        a, b = nib.load(ours), nib.load(theirs)  # type: ignore[attr-defined]
        assert a.shape == b.shape and np.asarray(a.dataobj).dtype == np.asarray(b.dataobj).dtype
        np.testing.assert_array_equal(a.affine, b.affine)
        np.testing.assert_allclose(
            np.asarray(a.dataobj), np.asarray(b.dataobj), rtol=1e-5, atol=1e-9
        )
    elif name.endswith("_record.json"):
        mine, reference = json.loads(ours.read_text()), json.loads(theirs.read_text())
        for key in VOLATILE_RECORD_FIELDS:
            assert isinstance(mine.pop(key), float | dict)
            reference.pop(key)
        assert _close(mine, reference), (mine, reference)
    elif name == "dataset_description.json":  # DatasetLinks names where the input lives
        mine, reference = json.loads(ours.read_text()), json.loads(theirs.read_text())
        assert mine.pop("DatasetLinks") == {"raw": EXAMPLE.resolve().as_uri()}
        reference.pop("DatasetLinks")
        assert mine == reference
    else:
        assert ours.read_text() == theirs.read_text()


def _close(a: object, b: object) -> bool:
    """Equal, floats to float32 rounding (the fit's precision)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-5, atol=0))
    return a == b


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "out"
        run_example(fresh)
        shutil.rmtree(REFERENCE, ignore_errors=True)
        for name in sorted(published_files(fresh)):
            (REFERENCE / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh / name, REFERENCE / name)
    print(f"reference run rewritten under {REFERENCE}")
