"""Participant pages built from a synthetic output folder."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from t2starmap.fit.status import level_named
from t2starmap.report import maps, participant, sections
from t2starmap.report.statusmap import STATUS_RGB, status_png
from tests.report.helpers import assert_self_contained, synthetic_output


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".html"
    }


@pytest.mark.parametrize(("subject", "session"), [("01", None), ("02", "1")])
def test_page_content(tmp_path: Path, subject: str, session: str | None) -> None:
    outcome = synthetic_output(tmp_path, subject=subject, session=session)
    before = digest(tmp_path)
    pages = participant.write_participant_reports(tmp_path / "out", tmp_path / "bids", [outcome])
    assert digest(tmp_path) == before, "the report changed an input or a map"
    expected = f"sub-{subject}" + (f"_ses-{session}" if session else "") + ".html"
    assert pages == [tmp_path / "out" / expected]
    text = pages[0].read_text(encoding="utf-8")
    found = assert_self_contained(text)
    assert len(found.images) == 9  # the fit-status map, 6 montages, histogram, decay curves
    for needle in (
        "fixed window 0–100 ms",
        "T2* (ms) montage",
        "R2* (1/s) montage",
        "S0 (input units) montage",
        "RMSE (input units) montage",
        "SE of T2* (ms) montage",
        "T2* histogram",
        "decay curves",
        "3, 7.5, 12, 16.5, 21, 25.5, 30, 34.5 (8 echoes)",
        "7 T",
        "Acme X1",
        "2 × 2 × 2.5",
        "20 × 18 × 5",
        "0.50 s",
        "failed voxel(s) in magenta",
        "Axial slices k = 1, 2, 3 of the file (voxel axis k, 0–4), tiles in order from "
        "inferior to superior",
        "radiological convention",
        "named by their voxel indices (i, j, k) in the file",
        # warnings are shown, escaped
        "only &lt;2&gt; echoes &amp; a warning",
    ):
        assert needle in text, needle
    assert "<2>" not in text
    assert '<meta name="viewport"' in text


def test_the_noise_levels_caveat_is_in_the_row_that_gives_sigma(tmp_path: Path) -> None:
    outcome = replace(synthetic_output(tmp_path), noise_caveat="magnitude only: <off> & more")
    [page] = participant.write_participant_reports(tmp_path / "out", tmp_path / "bids", [outcome])
    row = re.search(r'<th scope="row">Noise level σ</th><td>([^<]*)</td>', page.read_text())
    assert row is not None and row.group(1).endswith(
        "; caveat: magnitude only: &lt;off&gt; &amp; more"
    )


def test_missing_optional_maps_and_no_failures(tmp_path: Path) -> None:
    outcome = replace(
        synthetic_output(tmp_path, failed_fraction=0.0, skip=("t2star_se", "rmse")), warnings=()
    )
    [page] = participant.write_participant_reports(tmp_path / "out", tmp_path / "bids", [outcome])
    text = page.read_text(encoding="utf-8")
    assert len(assert_self_contained(text).images) == 7
    assert "SE of T2*" not in text
    assert "No voxel failed; no misfit." in text
    assert "No warnings were raised." in text


@pytest.mark.parametrize(
    ("shape", "failed_fraction"),
    [((20, 18, 5), 1.0), ((20, 18), 0.05)],
    ids=["all-failed", "2-D"],
)
def test_degenerate_sets_still_give_a_page(
    tmp_path: Path, shape: tuple[int, ...], failed_fraction: float
) -> None:
    outcome = synthetic_output(tmp_path, shape=shape, failed_fraction=failed_fraction)
    [page] = participant.write_participant_reports(tmp_path / "out", tmp_path / "bids", [outcome])
    text = page.read_text(encoding="utf-8")
    assert len(assert_self_contained(text).images) == 9
    assert " × ".join(str(n) for n in shape) in text
    assert ("single slice" in text) == (len(shape) == 2)
    if failed_fraction == 1.0:
        assert "T2* of the 0 signal-mask voxels" in text
        assert "no voxel</td>" in text


def test_sets_of_one_session_share_a_page(tmp_path: Path) -> None:
    runs = [synthetic_output(tmp_path, subject="04", run=r) for r in ("1", "2")]
    [page] = participant.write_participant_reports(tmp_path / "out", tmp_path / "bids", runs)
    text = page.read_text(encoding="utf-8")
    assert page.name == "sub-04.html"
    assert text.count('<section id="sub-') == 2 and text.count('<section id="methods"') == 1
    assert '<a href="#sub-04_run-1">' in text and 'id="sub-04_run-2"' in text


def test_a_page_keeps_sets_that_earlier_runs_published(tmp_path: Path) -> None:
    """Jobs split by run write the same page one after the other: the last keeps them all."""
    first, second = (synthetic_output(tmp_path, subject="05", run=r) for r in ("1", "2"))
    out, bids = tmp_path / "out", tmp_path / "bids"
    participant.write_participant_reports(out, bids, [first])
    [page] = participant.write_participant_reports(out, bids, [second])
    text = page.read_text(encoding="utf-8")
    assert text.count('<section id="sub-') == 2 and text.count('<section id="methods"') == 1
    assert text.index('id="sub-05_run-1"') < text.index('id="sub-05_run-2"')
    earlier = text[: text.index('id="sub-05_run-2"')]
    # what the earlier run recorded: its time, warnings, noise model and source metadata
    assert "0.50 s (read the echoes and fit)" in earlier
    assert "only &lt;2&gt; echoes" in earlier and "rician" in earlier
    assert "Acme X1" in earlier
    assert "0.50 s (read the echoes and fit)" in text[text.index('id="sub-05_run-2"') :]


def test_each_session_gets_its_own_page(tmp_path: Path) -> None:
    first = synthetic_output(tmp_path / "a", subject="03", session="x")
    second = synthetic_output(tmp_path / "b", subject="03", session="y")
    pages = participant.write_participant_reports(
        tmp_path / "a" / "out", tmp_path / "a" / "bids", [first]
    ) + participant.write_participant_reports(
        tmp_path / "b" / "out", tmp_path / "b" / "bids", [second]
    )
    assert [p.name for p in pages] == ["sub-03_ses-x.html", "sub-03_ses-y.html"]


def test_representative_voxels_pick_low_median_high() -> None:
    t2 = np.arange(1, 101, dtype=np.float64).reshape(10, 10) / 1000
    good = np.ones_like(t2, dtype=bool)
    good[0, 0] = False  # excluded voxels are never picked
    picked = dict(maps.representative_voxels(t2, good))
    assert set(picked) == {"low", "median", "high"}
    assert t2[picked["low"]] < t2[picked["median"]] < t2[picked["high"]]
    assert abs(t2[picked["median"]] - np.median(t2[good])) <= 0.0005
    assert maps.representative_voxels(t2, np.zeros_like(good)) == []


def test_decay_voxels_come_from_the_raw_echoes(tmp_path: Path) -> None:
    outcome = synthetic_output(tmp_path)
    voxel = (10, 9, 2)
    paths = [tmp_path / "bids" / s.path for s in outcome.sources]
    signals, first = maps.read_echoes(paths, [voxel])
    raw = [np.asarray(nib.load(p).dataobj)[voxel] for p in paths]
    assert np.allclose(signals[0], raw)
    assert first is not None and first.shape == (20, 18, 5)


def test_no_map_means_no_page(tmp_path: Path) -> None:
    outcome = synthetic_output(tmp_path, skip=("t2star",))
    with pytest.raises(FileNotFoundError, match="no T2\\* map"):
        participant.write_participant_reports(tmp_path / "out", tmp_path / "bids", [outcome])
    assert not list((tmp_path / "out").glob("*.html"))


def test_page_names() -> None:
    assert participant.page_name("01", None) == "sub-01.html"
    assert participant.page_name("01", "pre") == "sub-01_ses-pre.html"
    assert re.fullmatch(r"sub-\w+(_ses-\w+)?\.html", participant.page_name("a1", "b2"))


def test_maps_handed_over_give_the_page_that_reading_them_gives(tmp_path: Path) -> None:
    """The section drawn from the maps and echoes a run holds (in_memory_maps, echo_samples)
    is the one drawn from the published files and the raw echoes; the samples are used."""
    from t2starmap.bids.nifti import read_volume

    outcome = synthetic_output(tmp_path)
    out, bids = tmp_path / "out", tmp_path / "bids"
    loaded = maps.load_set_maps(out, outcome)
    held = maps.in_memory_maps(
        {k: (v.astype(np.uint8) if v.dtype == bool else v) for k, v in loaded.maps.items()},
        loaded.affine,
        loaded.zooms,
        loaded.sidecar,
    )
    stack = np.stack([read_volume(bids / s.path) for s in outcome.sources], axis=-1)
    samples = maps.echo_samples(stack, held.maps)
    assert len(samples.voxels) == 3 and samples.signals.shape == (3, len(outcome.sources))
    read = sections.set_section(outcome, loaded, bids)
    given = sections.set_section(outcome, held, bids, samples)
    assert given == read
    changed = replace(samples, signals=samples.signals * 0.5)  # the samples are really used
    assert sections.set_section(outcome, held, bids, changed).plots != read.plots


def test_the_first_echo_of_integer_echoes_is_sampled_as_float32(tmp_path: Path) -> None:
    """int16 echoes stay int16 in memory; the page's first echo is their float32 values, as
    when the file was read as float (a float64 montage of it would cost twice the memory)."""
    outcome = synthetic_output(tmp_path)
    loaded = maps.load_set_maps(tmp_path / "out", outcome)
    shape = loaded.maps["t2star"].shape
    stack = np.random.default_rng(0).integers(0, 3000, (*shape, 4)).astype(np.int16)
    samples = maps.echo_samples(stack, loaded.maps)
    assert samples.first is not None and samples.first.dtype == np.float32
    np.testing.assert_array_equal(samples.first, stack[..., 0])
    floats = maps.echo_samples(stack.astype(np.float32), loaded.maps)
    assert floats.first is not None and floats.first.dtype == np.float32
    assert not np.shares_memory(floats.first, stack)


def test_a_page_lists_the_sets_that_failed(tmp_path: Path) -> None:
    """A failure record of the page's participant/session is listed with its reason and
    exit code, above the sections; one for another session is not."""
    from t2starmap.bids.atomic import write_text
    from t2starmap.bids.records import SetFailure, failure_path

    outcome = synthetic_output(tmp_path, subject="06", run="1")
    out = tmp_path / "out"
    for entities in ({"subject": "06", "run": "2"}, {"subject": "06", "session": "x"}):
        failure = SetFailure(entities, "echo-3: <truncated>", 65, "BadDataError", None, "now")
        write_text(failure_path(out, entities), failure.to_json())
    [page] = participant.write_participant_reports(out, tmp_path / "bids", [outcome])
    text = page.read_text(encoding="utf-8")
    assert text.count("Echo sets that failed") == 1 and "sub-06_run-2" in text
    assert "echo-3: &lt;truncated&gt;" in text and "65 (bad data)" in text
    assert "sub-06_ses-x" not in text
    assert text.index("Echo sets that failed") < text.index('id="sub-06_run-1"')


def test_the_wrapped_field_map_is_cyclic_over_its_wrap_limit(tmp_path: Path) -> None:
    """+limit and -limit are one frequency: the field map's colour map has one colour at both
    ends, and its window is the wrap limit, not a percentile of the values."""
    from matplotlib import colormaps

    [spec] = [m for m in sections.MONTAGES if m.key == "frequency"]
    ends = colormaps[spec.cmap]([0.0, 1.0])
    assert np.allclose(ends[0], ends[1], atol=0.02), spec.cmap
    outcome = synthetic_output(tmp_path)
    loaded = maps.load_set_maps(tmp_path / "out", outcome)
    field = np.where(loaded.maps["signal"], 20.0, 0.0).astype(np.float32)
    shown = replace(
        loaded, maps={**loaded.maps, "frequency": field}, sidecar={"FieldMapWrapLimit": 62.5}
    )
    section = sections.set_section(outcome, shown, tmp_path / "bids")
    [caption] = [f.caption for f in section.montages if f.alt.startswith("field map")]
    assert "window ±62.5 Hz" in caption


def test_the_correction_is_shown_as_a_difference(tmp_path: Path) -> None:
    outcome = synthetic_output(tmp_path)
    loaded = maps.load_set_maps(tmp_path / "out", outcome)
    uncorrected = loaded.maps["r2star"] + 7.0
    shown = replace(loaded, maps={**loaded.maps, "r2star_uncorrected": uncorrected})
    section = sections.set_section(outcome, shown, tmp_path / "bids")
    alts = [f.alt for f in section.montages]
    assert "R2* correction (1/s) montage" in alts and "R2* uncorrected" not in " ".join(alts)
    [caption] = [f.caption for f in section.montages if f.alt.startswith("R2* correction")]
    assert "corrected minus uncorrected R2*" in caption and "window ±7 s⁻¹" in caption


def test_misfit_is_counted_and_coloured_apart_from_failure(tmp_path: Path) -> None:
    """Issue 27: voxels whose decay does not follow the model have an estimate; the page
    counts them apart from the failed ones, draws them in their own colour, draws the
    fit-status map with its legend, and keeps them in the histogram."""
    outcome = synthetic_output(tmp_path, failed_fraction=0.05)
    status_path = outcome.path(tmp_path / "out", "status")
    image = nib.load(status_path)
    status = np.asarray(image.dataobj)
    signal = np.asarray(nib.load(outcome.path(tmp_path / "out", "signal")).dataobj) > 0
    misfit = signal & (status == 0) & (np.arange(status.size).reshape(status.shape) % 4 == 0)
    status = np.where(signal & (status == 0), 1, status)  # good
    status[misfit] = level_named("decay_not_following_model").index
    nib.save(nib.Nifti1Image(status.astype(np.uint8), image.affine), status_path)
    counts = {"good": int((status == 1).sum()), "decay_not_following_model": int(misfit.sum())}
    outcome = replace(
        outcome, status_counts=counts, misfit_fraction=float(misfit.sum() / signal.sum())
    )
    [page] = participant.write_participant_reports(tmp_path / "out", tmp_path / "bids", [outcome])
    text = page.read_text(encoding="utf-8")
    tinted = f"{int(misfit.sum())} voxel(s) whose decay does not follow the model tinted orange"
    assert tinted in text
    assert "Decay not following the model (estimate kept, SE inflated)" in text
    assert f"{int(misfit.sum())} voxel(s), {100 * outcome.misfit_fraction:.2f} %" in text
    assert "fit-status map" in text and "failed voxel(s) in magenta" in text
    good = int(
        (
            signal
            & ~np.asarray(nib.load(outcome.path(tmp_path / "out", "failed")).dataobj).astype(bool)
        ).sum()
    )
    assert (
        f"T2* of the {good} signal-mask voxels whose fit did not fail ({int(misfit.sum())}" in text
    )


def test_the_status_map_is_drawn_in_its_colours_with_a_legend() -> None:
    status = np.zeros((6, 6, 1), dtype=np.uint8)
    status[1:5, 1:5] = 1
    status[2, 2] = level_named("decay_not_following_model").index
    status[3, 3] = level_named("not_converged").index
    png = status_png(status, [0], {"good": 14, "decay_not_following_model": 1, "not_converged": 1})
    picture = imread(io.BytesIO(png))[..., :3]
    for name in ("good", "decay_not_following_model", "not_converged"):
        colour = np.asarray(STATUS_RGB[name])
        assert np.any(np.all(np.abs(picture - colour) < 0.02, axis=-1)), name
    assert STATUS_RGB["decay_not_following_model"] != STATUS_RGB["not_converged"]


def test_a_montage_draws_its_shown_slices_as_the_whole_volume_gives_them(tmp_path: Path) -> None:
    """The volume a montage draws is worked out in the shown slices only: there it is the
    whole volume's product and mask (NaN elsewhere, never drawn); values in the mask taken by
    index (C order) or by the mask (files' Fortran order) are the same."""
    outcome = synthetic_output(tmp_path, shape=(20, 18, 10))
    loaded = maps.load_set_maps(tmp_path / "out", outcome)
    grid, _ = sections._grid(outcome, loaded, "neurological")
    assert 1 < len(grid.slices) < 10
    values = loaded.maps["t2star"]
    for spec in [m for m in sections.MONTAGES if m.key == "t2star"] + [
        replace(sections.MONTAGES[0], overlay=False)
    ]:
        whole = values * spec.factor
        whole = grid.canon(np.where(grid.signal, whole, np.nan) if spec.overlay else whole)
        drawn = sections._drawn_volume(spec, values, grid)
        shown = np.zeros(drawn.shape[grid.view.axis], dtype=bool)
        shown[list(grid.slices)] = True
        cut = np.moveaxis(drawn, grid.view.axis, 0)
        np.testing.assert_array_equal(cut[shown], np.moveaxis(whole, grid.view.axis, 0)[shown])
        assert np.isnan(cut[~shown]).all()
    for layout in (values, np.ascontiguousarray(values)):
        taken = sections._taken(layout, grid.good, grid.good_index)
        np.testing.assert_array_equal(taken, values[grid.good])


def test_maps_in_either_memory_order_give_the_same_section(tmp_path: Path) -> None:
    """Maps a run holds (C order) and maps read from files (Fortran order) draw one section."""
    outcome = synthetic_output(tmp_path)
    bids = tmp_path / "bids"
    loaded = maps.load_set_maps(tmp_path / "out", outcome)
    assert not loaded.maps["t2star"].flags.c_contiguous
    c_order = replace(loaded, maps={k: np.ascontiguousarray(v) for k, v in loaded.maps.items()})
    assert sections.set_section(outcome, c_order, bids) == sections.set_section(
        outcome, loaded, bids
    )
