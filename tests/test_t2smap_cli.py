"""``t2starmap t2smap``'s arguments (tedana 26's names and defaults) and every error path:
one line, the documented exit code, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from t2starmap.cli.t2smap import (
    build_parser,
    echo_times_seconds,
    main,
    parse_volume_indices,
    settings_from_args,
)
from t2starmap.errors import UsageError
from t2starmap.sim.bold import make_bold_run, write_bold_run
from tests.support.bold import Synthetic, t2smap_args, written_run


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return written_run(tmp_path_factory, (8, 8, 4), 6, seed=1)


def test_tedanas_defaults() -> None:
    args = build_parser().parse_args(["-d", "a", "-e", "0.01", "0.02"])
    assert (args.fittype, args.fitmode, args.combmode, args.convention) == (
        "loglin",
        "all",
        "t2s",
        "bids",
    )
    assert args.masktype == ["dropout"] and args.dummy_scans == 0 and args.exclude is None
    assert args.n_threads == 1 and args.out_dir == Path(".") and args.prefix == ""
    assert not (args.verbose or args.overwrite or args.debug or args.quiet)


def test_echo_times_in_seconds_or_milliseconds() -> None:
    assert echo_times_seconds([0.015, 0.039]) == (0.015, 0.039)
    assert echo_times_seconds([15.0, 39.0]) == (0.015, 0.039)
    with pytest.raises(UsageError, match="all in seconds"):
        echo_times_seconds([0.015, 39.0])
    with pytest.raises(UsageError):
        echo_times_seconds([-0.01, 0.02])


def test_volume_indices_as_tedana_reads_them() -> None:
    assert parse_volume_indices("0,5:8, 10") == (0, 5, 6, 7, 10)
    assert parse_volume_indices(None) == ()
    for bad in ("0:5:2", ":5", "-1", "a", "3:"):
        with pytest.raises(UsageError, match="--exclude"):
            parse_volume_indices(bad)


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["-e", "0.01"], 64, "echo times"),  # one TE for four files
        (["-e", "0.012", "28", "0.044", "0.06"], 64, "all in seconds"),
        (["-e", "0.06", "0.044", "0.028", "0.012"], 64, "must ascend"),
        (["--fitmode", "ts", "--exclude", "0"], 64, "not supported"),
        (["--exclude", "0:6"], 64, "no volume"),
        (["--exclude", "9"], 64, "past the last volume"),
        (["--dummy-scans", "6"], 64, "6 volumes"),
        (["--n-threads", "0"], 64, "n-threads"),
        (["--fittype", "magic"], 64, "invalid choice"),
    ],
)
def test_usage_errors(
    small: Synthetic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    code: int,
    words: str,
) -> None:
    args = t2smap_args(small, tmp_path / "out", "--quiet")
    if extra[0] == "-e":
        i = args.index("-e")
        args = args[:i] + args[i + 5 :] + extra
    else:
        args += extra
    assert main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()  # nothing created, or removed again


def test_missing_input_is_66(
    small: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = t2smap_args(small, tmp_path / "out")
    args[1] = str(tmp_path / "nowhere.nii.gz")
    assert main(args) == 66
    assert "nowhere.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_images_are_65_and_leave_nothing(
    small: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, paths, mask = small
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    args = t2smap_args(small, tmp_path / "out", "--quiet")
    args[args.index(str(paths[2]))] = str(broken)
    assert main(args) == 65
    assert "broken.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # the stage and the folder it made were removed
    other = make_bold_run((8, 8, 5), 6, seed=1)
    wrong = write_bold_run(tmp_path / "other", other)
    args = t2smap_args(small, tmp_path / "out2", "--quiet")
    args[args.index(str(mask))] = str(tmp_path / "other" / "mask.nii.gz")
    assert main(args) == 65
    args = t2smap_args(small, tmp_path / "out3", "--quiet")
    args[args.index(str(paths[1]))] = str(wrong[1])
    assert main(args) == 65
    assert "differs" in capsys.readouterr().err


def test_existing_outputs_need_overwrite(
    small: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(t2smap_args(small, out, "--quiet")) == 0
    stamp = (out / "T2starmap.nii.gz").stat().st_mtime_ns
    assert main(t2smap_args(small, out, "--quiet")) == 64
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "T2starmap.nii.gz").stat().st_mtime_ns == stamp
    assert main(t2smap_args(small, out, "--quiet", "--overwrite")) == 0


def test_unwritable_output_is_73(small: Synthetic, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(t2smap_args(small, blocker / "out", "--quiet")) == 73


def test_bare_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 64
    assert "usage" in capsys.readouterr().err


def test_single_volume_nlls_cannot_measure_noise(tmp_path: Path) -> None:
    run = make_bold_run((8, 8, 4), 1, seed=1)
    paths = write_bold_run(tmp_path / "one", run)
    args = [
        "-d",
        *map(str, paths),
        "-e",
        *map(str, run.te),
        "--out-dir",
        str(tmp_path / "o"),
        "--mask",
        str(tmp_path / "one" / "mask.nii.gz"),
        "--fittype",
        "nlls",
        "--quiet",
    ]
    assert main(args) == 64
    assert not (tmp_path / "o").exists()


def test_excluded_volumes_are_counted_before_the_dummy_scans(small: Synthetic) -> None:
    """tedana's --exclude indices are of the whole series: after 3 dummy scans, index 5 is the
    kept data's volume 2, and an index among the dummy scans excludes nothing more."""
    from t2starmap.workflows.t2smap import fit_volumes

    args = build_parser().parse_args(
        t2smap_args(small, Path("o"), "--dummy-scans", "3", "--exclude", "1,5,6")
    )
    keep = fit_volumes(settings_from_args(args, "t2smap"), 37)
    assert keep is not None
    assert np.flatnonzero(~keep).tolist() == [2, 3]


@pytest.mark.parametrize(
    ("threads", "workers"), [([], 1), (["--n-threads", "3"], 3), (["--n-threads", "-1"], None)]
)
def test_the_allocator_is_prepared_for_the_fits_threads(
    small: Synthetic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    threads: list[str],
    workers: int | None,
) -> None:
    """As the participant level does: the C allocator prepared for ``--n-threads`` (1 by
    default, as tedana's; -1: the CPUs this process may use) before the fit."""
    import os

    from t2starmap import resources

    seen: list[int] = []
    monkeypatch.setattr(resources, "prepare_allocator", seen.append)
    assert main(t2smap_args(small, tmp_path / "out", "--quiet", *threads)) == 0
    assert seen == [workers or resources.available_cpus(os.environ)[0]]
