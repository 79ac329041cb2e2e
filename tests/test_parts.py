"""Finding and loading the phase / real / imag parts beside the magnitude echoes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from t2starmap.bids import parts as parts_module
from t2starmap.bids.layout import Echo, EchoSet, build_echo_set, find_echo_sets
from t2starmap.bids.nifti import check_geometry, load_magnitude, read_magnitude
from t2starmap.bids.parts import (
    Parts,
    complex_available,
    find_parts,
    load_complex,
    phase_to_radians,
    read_echo_set,
)
from t2starmap.errors import BadDataError, ExitCode
from tests.conftest import SHARED_DATA

SHAPE = (4, 3, 2)
TE = (0.004, 0.010, 0.016)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def name(echo: int, part: str | None) -> str:
    return f"sub-01_echo-{echo}" + (f"_part-{part}" if part else "") + "_MEGRE"


def write(
    anat: Path,
    echo: int,
    part: str | None,
    data: np.ndarray,
    meta: dict | None = None,
    affine: np.ndarray = AFFINE,
) -> Path:
    anat.mkdir(parents=True, exist_ok=True)
    path = anat / f"{name(echo, part)}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    sidecar = {"EchoTime": TE[echo - 1]} if meta is None else meta
    (anat / f"{name(echo, part)}.json").write_text(json.dumps(sidecar))
    return path


def signal(seed: int = 0) -> np.ndarray:
    """A complex signal (*SHAPE, 3) with phase spread over (-pi, pi)."""
    rng = np.random.default_rng(seed)
    mag = rng.uniform(100, 1000, (*SHAPE, len(TE)))
    phase = rng.uniform(-math.pi, math.pi, mag.shape)
    return mag * np.exp(1j * phase)


def dataset(
    tmp_path: Path, parts: tuple[str, ...], *, x: np.ndarray | None = None, units: str = "rad"
) -> tuple[EchoSet, np.ndarray]:
    """Magnitude echoes (echo index order 3, 1, 2 against TE, to check the TE order) plus the
    given parts of the signal ``x``."""
    x = signal() if x is None else x
    anat = tmp_path / "sub-01" / "anat"
    echoes = []
    for k in range(len(TE)):
        echo = k + 1
        path = write(anat, echo, "mag", np.abs(x[..., k]))
        echoes.append(Echo(path, TE[k], {"EchoTime": TE[k]}))
        if "real" in parts:
            write(anat, echo, "real", x[..., k].real)
        if "imag" in parts:
            write(anat, echo, "imag", x[..., k].imag)
        if "phase" in parts:
            write(anat, echo, "phase", np.angle(x[..., k]), {"EchoTime": TE[k], "Units": units})
    return build_echo_set({"subject": "01"}, echoes[::-1]), x


def load(echo_set: EchoSet) -> np.ndarray:
    parts = find_parts(echo_set)
    assert parts is not None
    geometry = check_geometry(echo_set.paths)
    return load_complex(parts, geometry, load_magnitude(echo_set.paths, geometry))


# --- finding and loading -----------------------------------------------------------------------


def test_real_and_imag_loaded_in_te_order(tmp_path: Path) -> None:
    echo_set, x = dataset(tmp_path, ("real", "imag"))
    parts = find_parts(echo_set)
    assert parts is not None and parts.kind == "real-imag" and complex_available(parts)
    assert [p.name for p in parts.files[0]] == [
        f"{name(1, 'real')}.nii.gz",
        f"{name(1, 'imag')}.nii.gz",
    ]
    loaded = load(echo_set)
    assert loaded.dtype == np.complex64 and loaded.shape == (*SHAPE, 3)
    np.testing.assert_allclose(loaded, x, rtol=1e-6)


def test_phase_in_radians_times_magnitude(tmp_path: Path) -> None:
    echo_set, x = dataset(tmp_path, ("phase",))
    parts = find_parts(echo_set)
    assert parts is not None and parts.kind == "phase" and parts.units == ("rad",) * 3
    np.testing.assert_allclose(load(echo_set), x, rtol=1e-5)


@pytest.mark.parametrize("kinds", [("real", "imag"), ("phase",)])
def test_the_parts_are_the_same_read_in_threads(
    tmp_path: Path, kinds: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each echo is read and combined into its own slot, a few slices at a time: the same
    bytes in 1 or 3 threads, and as combined in one piece (blocks of one plane here); a file
    that cannot be read is named whichever thread reads it."""
    echo_set, x = dataset(tmp_path, kinds)
    whole = load(echo_set)
    np.testing.assert_allclose(whole, x, rtol=1e-5)
    monkeypatch.setattr(parts_module, "COMBINE_BLOCK", 1)
    parts = find_parts(echo_set)
    assert parts is not None
    geometry = check_geometry(echo_set.paths)
    magnitude = load_magnitude(echo_set.paths, geometry)
    alone = load_complex(parts, geometry, magnitude, workers=1)
    threaded = load_complex(parts, geometry, magnitude, workers=3)
    assert alone.tobytes() == threaded.tobytes() == whole.tobytes()
    broken = tmp_path / "sub-01" / "anat" / f"{name(2, kinds[0])}.nii.gz"
    broken.write_bytes(b"not nifti")
    with pytest.raises(BadDataError, match=f"{broken.name}.*not a readable NIfTI"):
        load_complex(parts, geometry, magnitude, workers=3)


@pytest.mark.parametrize("kinds", [("real", "imag"), ("phase",)])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_one_pool_reads_the_same_as_magnitude_then_parts(
    tmp_path: Path, kinds: tuple[str, ...], workers: int
) -> None:
    """:func:`read_echo_set` reads the magnitude echoes and the parts in one pool (each
    echo combined when its last file is in): the same bytes as the echoes read first and the
    parts combined after, with the echoes' unusable voxel (a negative sample) NaN in the
    signal where the phase is combined with the magnitude, as NaN x exp(i phase) is."""
    x = signal(3)
    echo_set, _ = dataset(tmp_path, kinds, x=x)
    mag1 = echo_set.paths[np.argsort(echo_set.echo_times)[1]]
    image = nib.load(str(mag1))
    data = np.asarray(image.dataobj).copy()
    data[1, 2, 0] = -5.0
    nib.save(nib.Nifti1Image(data, image.affine), str(mag1))
    parts = find_parts(echo_set)
    assert parts is not None
    geometry = check_geometry(echo_set.paths)
    echoes = read_magnitude(echo_set.paths, geometry, 1)
    assert echoes.unusable is not None and echoes.unusable.sum() == 1
    magnitude = echoes.data.copy()
    magnitude[echoes.unusable] = np.nan  # as the workflow does before combining
    apart = load_complex(parts, geometry, magnitude, workers=1)
    read = read_echo_set(echo_set.paths, parts, geometry, workers)
    together = read.signal()
    assert together is not None
    assert read.echoes.data.tobytes() == echoes.data.tobytes()
    assert np.array_equal(read.echoes.unusable, echoes.unusable)
    if kinds == ("phase",):
        assert np.isnan(together[1, 2, 0]).all() and np.isnan(apart[1, 2, 0]).all()
    np.testing.assert_array_equal(together, apart)  # NaN where NaN
    assert together.tobytes() == apart.tobytes()
    alone = read_echo_set(echo_set.paths, None, geometry, workers)
    assert alone.signal() is None and alone.echoes.data.tobytes() == echoes.data.tobytes()


@pytest.mark.parametrize("workers", [1, 3])
def test_one_pool_raises_the_magnitude_error_first_and_the_parts_on_demand(
    tmp_path: Path, workers: int
) -> None:
    """Read in one pool, an unreadable magnitude echo is named before an unreadable phase
    file (as when the echoes were read first), and a phase file's error is raised when the
    signal is asked for, after the echoes' own checks."""
    echo_set, _ = dataset(tmp_path, ("phase",))
    parts = find_parts(echo_set)
    assert parts is not None
    geometry = check_geometry(echo_set.paths)
    anat = tmp_path / "sub-01" / "anat"
    phase = anat / f"{name(1, 'phase')}.nii.gz"
    phase.write_bytes(b"not nifti")
    read = read_echo_set(echo_set.paths, parts, geometry, workers)
    assert read.echoes.unusable is None
    with pytest.raises(BadDataError, match=f"{phase.name}.*not a readable NIfTI"):
        read.signal()
    mag = anat / f"{name(3, 'mag')}.nii.gz"
    mag.write_bytes(b"not nifti")
    with pytest.raises(BadDataError, match=f"{mag.name}.*not a readable NIfTI"):
        read_echo_set(echo_set.paths, parts, geometry, workers)


def test_real_imag_preferred_over_phase(tmp_path: Path) -> None:
    echo_set, _ = dataset(tmp_path, ("real", "imag", "phase"))
    parts = find_parts(echo_set)
    assert parts is not None and parts.kind == "real-imag"


def test_no_parts_and_no_part_entity(tmp_path: Path) -> None:
    echo_set, _ = dataset(tmp_path, ())
    assert find_parts(echo_set) is None and not complex_available(None)
    anat = tmp_path / "plain"
    echoes = [Echo(write(anat, k + 1, None, np.ones(SHAPE)), TE[k], {}) for k in range(3)]
    write(anat, 1, "phase", np.zeros(SHAPE), {"Units": "rad"})  # no part-mag to pair with
    assert find_parts(build_echo_set({"subject": "01"}, echoes)) is None


# --- phase units -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "factor", "offset"),
    [
        ("rad", 1.0, 0.0),
        ("rad", 1.0, math.pi),  # [0, 2 pi): the same angles
        ("arbitrary", 1.0, 0.0),
        ("arbitrary", 1000.0, 0.0),  # Philips milliradians
        ("arbitrary", 4096.0 / math.pi, 0.0),  # Siemens 12-bit
    ],
)
def test_phase_units_converted(units: str, factor: float, offset: float) -> None:
    rad = np.linspace(-math.pi, math.pi * 0.999, 200)
    values = (rad + offset) * factor
    out = phase_to_radians(values, units, "x.nii.gz")
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.exp(1j * out), np.exp(1j * (rad + offset)), atol=1e-5)


@pytest.mark.parametrize(
    ("units", "values", "message"),
    [
        ("rad", np.linspace(-180, 180, 50), "outside"),  # degrees labelled rad
        ("arbitrary", np.linspace(-180, 180, 50), "matches none"),  # degrees
        ("arbitrary", np.linspace(0, 4095, 50), "matches none"),  # unsigned: ambiguous
        ("arbitrary", np.linspace(-1, 1, 50), "matches none"),  # normalised: ambiguous
        ("rad", np.full(4, np.nan), "no finite value"),
    ],
)
def test_phase_ranges_refused(units: str, values: np.ndarray, message: str) -> None:
    with pytest.raises(BadDataError, match=f"phase.nii.gz: .*{message}"):
        phase_to_radians(values, units, "phase.nii.gz")


def test_vendor_integer_phase_loaded_from_files(tmp_path: Path) -> None:
    """Siemens +-4096 integers with Units "arbitrary", read from the files."""
    x = signal(3)
    echo_set, _ = dataset(tmp_path, (), x=x)
    anat = tmp_path / "sub-01" / "anat"
    written = np.round(np.angle(x) * 4096 / math.pi).clip(-4096, 4095)
    written.reshape(-1, 3)[0] = -4096  # the full range, as wraps fill it in real images
    for k in range(3):
        meta = {"EchoTime": TE[k], "Units": "arbitrary"}
        write(anat, k + 1, "phase", written[..., k], meta)
    expected = np.abs(x) * np.exp(1j * written * math.pi / 4096)
    np.testing.assert_allclose(load(echo_set), expected, rtol=1e-5, atol=1e-3)


# --- bad input: one line naming the file, exit 65 ----------------------------------------------


def expect_bad(echo_set: EchoSet, named: str, message: str) -> None:
    with pytest.raises(BadDataError, match=message) as info:
        load(echo_set)
    text = str(info.value)
    assert named in text and "\n" not in text, text
    assert info.value.exit_code == ExitCode.BAD_DATA


def test_phase_of_another_shape(tmp_path: Path) -> None:
    echo_set, _ = dataset(tmp_path, ("phase",))
    write(tmp_path / "sub-01" / "anat", 2, "phase", np.zeros((4, 3, 3)), {"Units": "rad"})
    expect_bad(echo_set, f"{name(2, 'phase')}.nii.gz", r"shape \(4, 3, 3\) differs")


def test_phase_of_another_affine(tmp_path: Path) -> None:
    echo_set, _ = dataset(tmp_path, ("phase",))
    write(tmp_path / "sub-01" / "anat", 2, "phase", np.zeros(SHAPE), {"Units": "rad"}, np.eye(4))
    expect_bad(echo_set, f"{name(2, 'phase')}.nii.gz", "affine differs")


def test_phase_without_units(tmp_path: Path) -> None:
    echo_set, x = dataset(tmp_path, ("phase",))
    write(tmp_path / "sub-01" / "anat", 3, "phase", np.angle(x[..., 2]), {"EchoTime": TE[2]})
    expect_bad(echo_set, f"{name(3, 'phase')}.nii.gz", "has no Units")


def test_phase_in_degrees(tmp_path: Path) -> None:
    echo_set, _ = dataset(tmp_path, ("phase",), units="deg")
    expect_bad(echo_set, f"{name(1, 'phase')}.nii.gz", "Units 'deg' not accepted")


def test_phase_values_in_degrees_labelled_rad(tmp_path: Path) -> None:
    x = signal(4)
    echo_set, _ = dataset(tmp_path, ())
    for k in range(3):
        degrees = np.degrees(np.angle(x[..., k]))
        write(tmp_path / "sub-01" / "anat", k + 1, "phase", degrees, {"Units": "rad"})
    expect_bad(echo_set, f"{name(1, 'phase')}.nii.gz", "outside")


@pytest.mark.parametrize("part", ["phase", "real"])
def test_a_missing_echo_in_one_part(tmp_path: Path, part: str) -> None:
    echo_set, _ = dataset(tmp_path, ("phase",) if part == "phase" else ("real", "imag"))
    anat = tmp_path / "sub-01" / "anat"
    for gone in {"phase": ["phase"], "real": ["real", "imag"]}[part]:
        (anat / f"{name(2, gone)}.nii.gz").unlink()
    expect_bad(echo_set, f"part-{part}", f"exists for 2 of 3 echoes.*{name(2, 'mag')}")


@pytest.mark.parametrize(("have", "lack"), [("real", "imag"), ("imag", "real")])
def test_real_without_imag(tmp_path: Path, have: str, lack: str) -> None:
    echo_set, _ = dataset(tmp_path, ("real", "imag"))
    (tmp_path / "sub-01" / "anat" / f"{name(3, lack)}.nii.gz").unlink()
    expect_bad(echo_set, f"{name(3, have)}.nii.gz", f"part-{have} without part-{lack}")


def test_part_echo_time_differs(tmp_path: Path) -> None:
    echo_set, x = dataset(tmp_path, ("real", "imag"))
    write(tmp_path / "sub-01" / "anat", 2, "imag", x[..., 1].imag, {"EchoTime": 0.011})
    expect_bad(echo_set, f"{name(2, 'imag')}.nii.gz", "EchoTime 0.011 s differs")


def test_unreadable_part(tmp_path: Path) -> None:
    echo_set, _ = dataset(tmp_path, ("real", "imag"))
    (tmp_path / "sub-01" / "anat" / f"{name(1, 'real')}.nii.gz").write_bytes(b"not nifti")
    expect_bad(echo_set, f"{name(1, 'real')}.nii.gz", "not a readable NIfTI")


def test_cut_short_part_is_worded_as_nibabel_words_it(tmp_path: Path) -> None:
    """A part is read in one piece, as the echoes are; where nibabel cannot open it either
    (a gzip cut short), the message stays nibabel's."""
    echo_set, _ = dataset(tmp_path, ("phase",))
    part = tmp_path / "sub-01" / "anat" / f"{name(2, 'phase')}.nii.gz"
    part.write_bytes(part.read_bytes()[:-40])
    expect_bad(echo_set, part.name, "not a readable NIfTI")


def test_phase_needs_the_magnitude() -> None:
    parts = Parts(kind="phase", files=((Path("p.nii.gz"),),), units=("rad",))
    geometry = type("G", (), {"shape": (2, 2)})()
    with pytest.raises(ValueError, match="need the magnitude"):
        load_complex(parts, geometry, None)  # type: ignore[arg-type]


# --- the method decision -----------------------------------------------------------------------


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_parts_of_converted_scanner_data(tmp_path: Path) -> None:
    """GE real/imag and Siemens phase as ``t2starmap convert`` writes them: |real + i imag|
    equals the magnitude (within 1 % over the bright voxels), Siemens phase is in radians and
    its complex signal has the magnitude's modulus."""
    from t2starmap.cli.run import main

    bids = tmp_path / "bids"
    for label, folder in (("ge", "ge-mr750-kidney-megre"), ("ph", "siemens-prisma-megre-phantom")):
        source = SHARED_DATA / "dicom" / folder
        assert main(["convert", str(source), str(bids), "--participant-label", label]) == 0
    for echo_set in find_echo_sets(bids):
        parts = find_parts(echo_set)
        assert parts is not None
        geometry = check_geometry(echo_set.paths)
        magnitude = load_magnitude(echo_set.paths, geometry)
        x = load_complex(parts, geometry, magnitude)
        bright = magnitude[..., 0] > np.percentile(magnitude[..., 0], 75)
        ratio = np.abs(x[bright]) / np.maximum(magnitude[bright], 1e-6)
        assert np.median(np.abs(ratio - 1)) < 0.01, echo_set.name
        assert parts.kind == {"ge": "real-imag", "ph": "phase"}[echo_set.subject]
