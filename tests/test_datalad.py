"""Datasets as DataLad/OpenNeuro ship them: images are relative links into a git-annex, inside
the dataset or in a superdataset above it, and metadata is inherited from top-level sidecars."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from t2starmap.cli.run import main
from tests.support.files import EXAMPLE, checksums

ANAT = Path("sub-01") / "anat"


def annex(dataset: Path, store: Path) -> list[Path]:
    """Move sub-01's images into ``store`` (an annex object store) and leave relative links."""
    links = []
    for image in sorted((dataset / ANAT).glob("*.nii.gz")):
        key = hashlib.sha256(image.read_bytes()).hexdigest()[:16]
        target = store / key / f"SHA256E-{key}.nii.gz"
        target.parent.mkdir(parents=True)
        shutil.move(image, target)
        os.symlink(os.path.relpath(target, image.parent), image)
        links.append(image)
    return links


@pytest.fixture(params=["inside", "superdataset"])
def annexed(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    root = tmp_path / "super"
    dataset = root / "ds"
    shutil.copytree(EXAMPLE, dataset)
    store = dataset / ".git" / "annex" / "objects"
    if request.param == "superdataset":
        store = root / ".git" / "annex" / "objects"
    annex(dataset, store)
    return dataset


def run(dataset: Path, out: Path, *extra: str) -> int:
    return main([str(dataset), str(out), "participant", "--participant-label", "01", *extra])


def test_annexed_images_keep_their_bids_names(annexed: Path, tmp_path: Path) -> None:
    before = checksums(annexed)
    out = tmp_path / "out"
    assert run(annexed, out, "-q") == 0  # validated as well
    sidecar = json.loads((out / ANAT / "sub-01_T2starmap.json").read_text())
    assert sidecar["Sources"][0] == "bids:raw:sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz"
    assert all(".git" not in s for s in sidecar["Sources"])
    record = json.loads((out / ANAT / "sub-01_record.json").read_text())
    assert record["sources"][0]["path"] == "sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz"
    assert "annex" not in (out / "sub-01.html").read_text()
    assert checksums(annexed) == before


@pytest.mark.parametrize("validate", [True, False])
def test_content_not_fetched_is_66_saying_datalad_get(
    annexed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], validate: bool
) -> None:
    link = annexed / ANAT / "sub-01_echo-3_part-mag_MEGRE.nii.gz"
    link.resolve().unlink()  # the annexed content is gone: the link dangles
    out = tmp_path / "out"
    assert run(annexed, out, *([] if validate else ["--skip-bids-validation"])) == 66
    err = capsys.readouterr().err
    assert f"datalad get {link}" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_echo_time_inherited_from_a_top_level_sidecar(tmp_path: Path) -> None:
    """EchoTime only in ``echo-<k>_part-mag_MEGRE.json`` at the top: the BIDS inheritance
    principle, honoured through pybids for the fit, the sidecars and the pages."""
    dataset = tmp_path / "ds"
    shutil.copytree(EXAMPLE, dataset)
    echo_times = {}
    for sidecar in sorted((dataset / ANAT).glob("*_MEGRE.json")):
        meta = json.loads(sidecar.read_text())
        k = sidecar.name.split("_echo-")[1].split("_")[0]
        echo_times[k] = meta.pop("EchoTime")
        manufacturer = meta.pop("Manufacturer")
        sidecar.write_text(json.dumps(meta))
        top = dataset / f"echo-{k}_part-mag_MEGRE.json"
        top.write_text(json.dumps({"EchoTime": echo_times[k], "Manufacturer": manufacturer}))
    out = tmp_path / "out"
    assert run(dataset, out, "-q", "--skip-bids-validation") == 0
    sidecar = json.loads((out / ANAT / "sub-01_T2starmap.json").read_text())
    assert sidecar["EchoTime"] == [echo_times[str(k)] for k in range(1, 9)]
    assert sidecar["Manufacturer"] == manufacturer
    assert manufacturer in (out / "sub-01.html").read_text()


@pytest.mark.parametrize("validate", [True, False])
def test_bold_echo_not_fetched_is_66_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], validate: bool
) -> None:
    """A multi-echo BOLD echo that is a dangling link (annex content not fetched) stops the
    run as a MEGRE echo does: exit 66, one line naming the file, nothing written."""
    from t2starmap.sim.bold import make_bold_run, write_bold_bids

    dataset = tmp_path / "ds"
    shutil.copytree(EXAMPLE, dataset)
    echoes = write_bold_bids(dataset, "sub-01_task-rest", make_bold_run((12, 12, 6), 4), "rest")
    store = dataset / ".git" / "annex" / "objects" / "echo2.nii.gz"
    store.parent.mkdir(parents=True)
    shutil.move(echoes[1], store)
    os.symlink(os.path.relpath(store, echoes[1].parent), echoes[1])
    store.unlink()  # not fetched
    out = tmp_path / "out"
    assert run(dataset, out, *([] if validate else ["--skip-bids-validation"])) == 66
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"datalad get {echoes[1]}" in err
    assert not out.exists()
