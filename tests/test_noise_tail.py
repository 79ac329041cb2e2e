"""The noise of tissue whose signal has decayed away (issue 27, magnitude only), its place in the
one choice, and the caveat where magnitude data cannot tell the noise (body simulator, seeded;
the real GE kidney where ``../shared/data`` is at hand)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from t2starmap.bids.layout import find_echo_sets
from t2starmap.bids.nifti import check_geometry
from t2starmap.bids.records import load_published
from t2starmap.cli.run import main
from t2starmap.noise import NoiseEstimate, all_candidates, cross_check
from t2starmap.noise.floor import Floor
from t2starmap.noise.spatial import NoiseMap
from t2starmap.noise.tail import TAIL, Tail, decayed_tail, follows
from t2starmap.noise.thermal import _calibrated, _shape_holds
from t2starmap.sim.body import BodySet, make_body_set
from t2starmap.sim.phantoms import make_coil_phantom, write_megre
from t2starmap.workflows.echo_set import Options, SetFit, fit_echo_set
from tests.conftest import SHARED_DATA
from tests.support.megre_parts import echo_parts

TE = np.asarray([0.0046 + 0.004612 * k for k in range(12)])


def decays(r2star: np.ndarray, sigma: float, coils: int, seed: int) -> np.ndarray:
    """Root-sum-of-squares magnitudes (n, 12) of ``coils`` coils, S0 400 shared among them,
    of each R2* in ``r2star`` (n,), per-channel noise ``sigma``."""
    rng = np.random.default_rng(seed)
    signal = 400.0 / np.sqrt(coils) * np.exp(-np.outer(r2star, TE))
    shape = (coils, *signal.shape)
    channels = signal + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    return np.asarray(np.sqrt(np.sum(np.abs(channels) ** 2, axis=0)))


@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("start", [0.5, 2.0])
def test_the_tail_of_decayed_voxels_is_the_noise(coils: int, start: float) -> None:
    """Voxels of R2* 20-400 1/s, those of high R2* reaching the noise by the last echoes:
    sigma within 3 % from a first guess half or twice the truth, Rician or central chi of 4
    coils; choosing echoes by the echoes before them leaves no selection bias (choosing the
    low echoes themselves gave 0.7 x)."""
    r2star = np.exp(np.random.default_rng(1).uniform(np.log(20.0), np.log(400.0), 8000))
    rows = decays(r2star, 8.0, coils, seed=2)
    index = np.arange(rows.shape[0])
    tail = decayed_tail(rows, index, (80, 100), start * 8.0, float(coils))
    assert tail.estimate.sigma == pytest.approx(8.0, rel=0.03), tail.estimate.reason
    assert tail.estimate.method == TAIL and tail.uniform
    assert tail.estimate.bounds[TAIL] == "estimate"


def test_no_decayed_tissue_no_tail() -> None:
    """Every voxel bright to the last echo: refused, with why."""
    rows = decays(np.full(5000, 20.0), 8.0, 1, seed=3)
    tail = decayed_tail(rows, np.arange(5000), (50, 100), 8.0, 1.0)
    assert tail.estimate.sigma is None and "too few echoes" in tail.estimate.reason
    short = decayed_tail(rows[:, :5], np.arange(5000), (50, 100), 8.0, 1.0)
    assert short.estimate.sigma is None and "6 echoes" in short.estimate.reason


def test_a_tail_whose_noise_varies_over_the_image_is_a_cross_check() -> None:
    """The noise triples from one side of the image to the other: the tail's map says so, and
    it is no estimate of the whole tissue."""
    r2star = np.full(100 * 80, 300.0)
    ramp = np.repeat(np.linspace(4.0, 12.0, 100), 80)[:, None]
    rng = np.random.default_rng(5)
    shape = (r2star.size, TE.size)
    noise = ramp * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    rows = np.abs(400.0 * np.exp(-np.outer(r2star, TE)) + noise)
    tail = decayed_tail(rows, np.arange(rows.shape[0]), (100, 80), 8.0, 1.0)
    assert tail.estimate.sigma is not None and not tail.uniform
    assert tail.estimate.bounds[TAIL].startswith("cross-check")


def _e(sigma: float | None, method: str, role: str = "estimate") -> NoiseEstimate:
    return NoiseEstimate(sigma, 1000, method=method, bounds={method: role})


def test_the_tail_replaces_the_magnitude_floor_only() -> None:
    """A ghosted background (40 against differences of 10): with a magnitude floor of 5 and a
    flat tail of 8, the tail is used; far below the floor (5 against 10) it is a cross-check
    and the floor stays; with the residual across the complex model the tail is a
    cross-check; a tail that is itself a cross-check is never used."""
    background, differences, residuals = _e(40.0, "bg"), _e(10.0, "diff"), _e(12.0, "residuals")
    floor, across = _e(5.0, "residual-floor"), _e(9.0, "across-model")
    used = cross_check(background, differences, residuals, floor, _e(8.0, TAIL))
    assert used.method == TAIL and used.sigma == 8.0 and "the tail is used" in used.reason
    below = cross_check(
        background, differences, residuals, _e(10.0, "residual-floor"), _e(5.0, TAIL)
    )
    assert below.method == "residual-floor" and below.bounds[TAIL].startswith("cross-check")
    phase = cross_check(background, differences, residuals, across, _e(8.0, TAIL))
    assert phase.method == "across-model" and phase.bounds[TAIL].startswith("cross-check")
    flat = cross_check(background, differences, residuals, floor, _e(8.0, TAIL, "cross-check"))
    assert flat.method == "residual-floor" and flat.candidates[TAIL] == 8.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "effects", [{"ghosts": 6}, {"acceleration": 2, "ghosts": 6, "misfit": 0.3, "jitter": 0.3}]
)
def test_magnitude_only_under_ghosts_the_sigma_used_is_the_noise(effects: dict, seed: int) -> None:
    """Ghosts drawn anew at each echo, magnitude only, alone and with SENSE R 2, misfit and
    jitter: within 15 % of the true noise in tissue (the magnitude floor alone: 0.52-1.27 x
    on seeds 0-5), and no caveat."""
    body = make_body_set(**effects, seed=seed)
    estimate = all_candidates(body.magnitude, body.echo_times).chosen()
    assert estimate.sigma is not None and estimate.sigma_map is None
    ratio = float(np.median(estimate.sigma / body.sigma_map[body.mask]))
    assert abs(ratio - 1) <= 0.15, (ratio, estimate.method, estimate.candidates)
    assert not estimate.caveat


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_under_ghosts_and_sense_the_tail_sets_the_level_of_the_noise_map(seed: int) -> None:
    """SENSE R 3 with ghosts changing per echo, misfit and jitter, magnitude only: the decayed
    tissue's own noise varies over the image, so the tail is no sigma for the rest; the
    magnitude floor's map keeps the g-factor's shape but not its level (0.52-1.37 x; not
    used alone where more than a fifth of the floor's variance decays, as on these seeds);
    scaled to the tail's noise in the decayed voxels, the map used is within 15 % of the
    truth."""
    body = sense_together(seed)
    found = all_candidates(body.magnitude, body.echo_times)
    assert found.tail.bounds[TAIL].startswith("cross-check")
    assert found.thermal.sigma_map is not None and "scaled by" in found.thermal.reason
    assert not found.thermal.caveat
    estimate = found.chosen()
    used = estimate.sigma_map if estimate.sigma_map is not None else estimate.sigma
    over = np.broadcast_to(used, body.mask.shape)[body.mask] / body.sigma_map[body.mask]
    assert abs(float(np.median(over)) - 1) <= 0.15, (estimate.method, estimate.reason)


#: SENSE R 3 with ghosts, misfit and jitter (``benchmarks/noise_body.py``'s "together, R 3").
SENSE_TOGETHER: dict = {
    "shape": (64, 66, 3),
    "acceleration": 3,
    "ghosts": 6,
    "misfit": 0.3,
    "jitter": 0.3,
    "sigma": 4.0,
}

CAVEAT_FREE = {
    "clean": {},
    "fat, two pools, dark echo": {"misfit": 0.3},
    "SENSE R 2": {"acceleration": 2},
    "SENSE R 3": {"acceleration": 3, "sigma": 4.0, "shape": (64, 66, 3)},
    "ghosts": {"ghosts": 6},
    "together, R 2": {"acceleration": 2, "ghosts": 6, "misfit": 0.3, "jitter": 0.3},
    "together, R 3": SENSE_TOGETHER,
}


@pytest.mark.parametrize("parts", ["magnitude", "phase"])
@pytest.mark.parametrize("effect", sorted(CAVEAT_FREE))
def test_no_caveat_where_the_noise_is_told(effect: str, parts: str) -> None:
    body = make_body_set(**CAVEAT_FREE[effect], seed=4)
    signal = body.signal if parts == "phase" else None
    estimate = all_candidates(body.magnitude, body.echo_times, signal=signal).chosen()
    assert not estimate.caveat, estimate.caveat


def short_train(seed: int) -> BodySet:
    """Ghosts over the tissue and no decayed tissue: S0 2000, echoes 0.7-8.3 ms."""
    return make_body_set(echo_times=TE * 0.15, s0=2000.0, ghosts=6, seed=seed)


def sense_together(seed: int) -> BodySet:
    """SENSE R 3 with ghosts, misfit and jitter: the decayed tissue's noise is not the rest's."""
    return make_body_set(**SENSE_TOGETHER, seed=seed)


def over_truth(body: BodySet, estimate: NoiseEstimate) -> float:
    """The median over the tissue of the sigma the fit uses (its map where one is used) over
    the true one."""
    assert estimate.sigma is not None, estimate.reason
    used = estimate.sigma_map if estimate.sigma_map is not None else estimate.sigma
    over = np.broadcast_to(used, body.mask.shape)[body.mask] / body.sigma_map[body.mask]
    return float(np.median(over))


def test_a_caveat_where_magnitude_cannot_tell_the_noise_from_ghosts() -> None:
    """Magnitude only, ghosts over the tissue changing from echo to echo, and no decayed
    tissue to check the magnitude floor (echoes 0.7-8.3 ms): the choice carries a caveat
    that says why."""
    body = short_train(0)
    caveat = all_candidates(body.magnitude, body.echo_times).chosen().caveat
    assert "magnitude cannot tell" in caveat and "decayed tail" in caveat


@pytest.mark.parametrize("seed", [1, 2, 6])
def test_a_train_too_short_to_decay_carries_a_caveat_with_phase_too(seed: int) -> None:
    """Echoes 0.7-8.3 ms, S0 2000, ghosts changing per echo, with real and imaginary parts:
    the signal's power falls only to about a quarter over the train, so the residual across
    the complex model cannot tell the ghosts that decay with it from the noise (1.8-15 x
    the truth on seeds 0-11; against the air's sigma anywhere from 0.7 to 14 x, while the
    GE kidney's across-model residual is 2.2 x its air's and right): a caveat that says so,
    on every seed. The simulator's phase rows and the GE kidney have none (above, below)."""
    body = short_train(seed)
    found = all_candidates(body.magnitude, body.echo_times, signal=body.signal)
    chosen = found.chosen()
    assert chosen.method == "across-model"
    assert "falls only to" in chosen.caveat and "cannot be told" in chosen.caveat


@pytest.mark.parametrize("seed", [7, 10])
def test_a_tail_that_looks_flat_under_sense_sets_the_level_where_it_lies(seed: int) -> None:
    """SENSE R 3 with ghosts, misfit and jitter, magnitude only, seeds 7 and 10: the decayed
    tissue's own map looks flat within chance (0.71 x the tissue's truth: its voxels lie
    where the g-factor is low), but its noise follows the floor's map beyond chance, so it
    is a local measurement: the floor's map scaled to it where it lies is within 15 % of the
    truth and carries no caveat (the tail taken for the tissue: 1.18-1.24 x, with a
    caveat). With phase neither has a caveat."""
    body = sense_together(seed)
    found = all_candidates(body.magnitude, body.echo_times)
    assert found.tail.bounds[TAIL] == "estimate"  # flat within chance on its own
    assert found.thermal.sigma_map is not None and "where they lie" in found.thermal.reason
    estimate = found.chosen()
    assert estimate.bounds[TAIL].startswith("cross-check")
    assert abs(over_truth(body, estimate) - 1) <= 0.15, (estimate.method, estimate.reason)
    assert not estimate.caveat
    phase = all_candidates(body.magnitude, body.echo_times, signal=body.signal)
    assert not phase.chosen().caveat


@pytest.mark.parametrize("seed", [16, 22])
def test_the_tail_sets_the_level_of_the_floor_map_before_the_floor_does(seed: int) -> None:
    """SENSE R 3 with ghosts, misfit and jitter, magnitude only, seeds 16 and 22: only
    16-18 % of the floor's residual variance decays (under the fifth up to which its own map
    was used), yet its own map is 1.21 and 0.71 x the truth (ghosts over the tissue set the
    level of its intercepts). The decayed tail measures the noise where it lies without a
    model: the floor's map scaled to it (1.04 and 1.10) is used, without a caveat."""
    body = sense_together(seed)
    found = all_candidates(body.magnitude, body.echo_times)
    assert found.thermal.sigma_map is not None and "where they lie" in found.thermal.reason
    estimate = found.chosen()
    assert abs(over_truth(body, estimate) - 1) <= 0.15, (estimate.method, estimate.reason)
    assert not estimate.caveat


def test_across_the_model_a_map_the_tail_follows_is_used_whatever_decays() -> None:
    """The same set with phase, seed 16: 63 % of the residual variance across the complex
    model decays with the signal (a map is refused above half), so one sigma was used, 0.80 x
    the truth in tissue (the median of a g-factor's mixture). The decayed tissue's noise, from
    no model, follows the across-model map by 16 standard errors: the ghosts did not shape
    it, and the map (0.95 x) is used."""
    body = sense_together(16)
    estimate = all_candidates(body.magnitude, body.echo_times, signal=body.signal).chosen()
    assert estimate.method == "across-model" and estimate.sigma_map is not None
    assert "follows the map" in estimate.reason
    assert abs(over_truth(body, estimate) - 1) <= 0.15, estimate.reason
    assert not estimate.caveat


def test_a_map_refused_for_what_decays_is_used_only_where_the_tail_follows_it() -> None:
    """Decayed voxels whose noise triples across the image: a floor with 60 % of its variance
    decaying keeps the map across the complex model when the tail follows it, not when the
    map runs the other way, and never for the magnitude floor (whose map takes the tail's
    level instead); with 30 % decaying the map holds either way."""
    tail, image = ramp_tail()
    index = np.arange(image.size)
    floor = Floor(8.0, 8.0, 0.6, np.ones(12), image.size, np.ones(image.size), index, 10)
    along, against = NoiseMap(image, 1.0, 0.1, True), NoiseMap(image[::-1], 1.0, 0.1, True)
    assert _shape_holds(along, floor, "across-model", tail)[0]
    assert "follows the map" in _shape_holds(along, floor, "across-model", tail)[1]
    assert not _shape_holds(against, floor, "across-model", tail)[0]
    assert not _shape_holds(along, floor, "residual-floor", tail)[0]
    assert not _shape_holds(along, floor, "across-model", None)[0]
    assert _shape_holds(against, replace(floor, decaying=0.3), "across-model", tail) == (True, "")


@pytest.mark.parametrize(
    ("effects", "seed"), [({"ghosts": 6}, 0), ({"ghosts": 6}, 8), ({"jitter": 0.3}, 4)]
)
def test_a_flat_tail_under_uniform_noise_does_not_follow_the_floor_map(
    effects: dict, seed: int
) -> None:
    """Uniform noise whose magnitude floor's map is shaped by ghosts (or jitter): the
    decayed tissue's noise does not follow it beyond chance (these seeds come closest: 3.2-3.4
    standard errors), so no map is used and the ghosted sets keep the flat tail."""
    body = make_body_set(**effects, seed=seed)
    found = all_candidates(body.magnitude, body.echo_times)
    assert found.thermal.sigma_map is None, found.thermal.reason
    estimate = found.chosen()
    assert estimate.sigma_map is None
    assert estimate.method == TAIL or "ghosts" not in effects, estimate.reason


@pytest.mark.parametrize(("own", "used"), [(9.0, True), (6.0, False)])
def test_the_tail_is_held_against_the_floor_map_where_it_lies(own: float, used: bool) -> None:
    """A floor whose map is 10 where the tail's voxels lie and 30 elsewhere: a tail of 9
    there scales the map by 0.9 (the floor's median over its voxels then 27, far above the
    tail: only the local comparison is fair); a tail of 6 is below 0.7 x the map where it
    lies and sets nothing."""
    shape = (20, 20)
    level = np.full(shape, 30.0)
    level[:5] = 10.0
    found = NoiseMap(level, 1.0, 0.1, True)
    where = np.arange(100)  # the first 5 rows: the map is 10 there
    tail = Tail(_e(own, TAIL), False, 0.5, where.size, where, np.full(where.size, own**2))
    index = np.arange(400)
    floor = Floor(20.0, 20.0, 0.3, np.ones(12), 400, np.ones(400), index, 10)
    calibrated = _calibrated(found, floor, tail)
    assert (calibrated is not None) == used
    if calibrated is not None:
        np.testing.assert_allclose(calibrated[0], 0.9 * level)
        assert calibrated[1] == pytest.approx(0.9 * 30.0)


def ramp_tail() -> tuple[Tail, np.ndarray]:
    """(the tail of 100 x 80 decayed voxels whose noise triples along the first axis, that
    noise's SD as an image)."""
    r2star = np.full(100 * 80, 300.0)
    ramp = np.repeat(np.linspace(4.0, 12.0, 100), 80)
    rng = np.random.default_rng(5)
    shape = (r2star.size, TE.size)
    noise = ramp[:, None] * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    rows = np.abs(400.0 * np.exp(-np.outer(r2star, TE)) + noise)
    tail = decayed_tail(rows, np.arange(rows.shape[0]), (100, 80), 8.0, 1.0)
    image = ramp.reshape(100, 80)
    return tail, image


def test_the_tail_follows_a_map_it_was_drawn_from() -> None:
    """Decayed voxels whose noise triples across the image: their own noise follows a map
    of that shape far beyond chance, and not one flat or reversed."""
    tail, image = ramp_tail()
    assert follows(tail, image) > 10
    assert follows(tail, image[::-1]) < -10
    assert follows(tail, np.ones_like(image)) == 0.0


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize(
    ("make", "parts"),
    [
        (short_train, "magnitude"),
        (short_train, "phase"),
        (sense_together, "magnitude"),
        (sense_together, "phase"),
    ],
)
def test_a_sigma_off_by_more_than_15_percent_carries_a_caveat(
    make: Callable[[int], BodySet], parts: str, seed: int
) -> None:
    """Never silently wrong on the seeds the rules were made on (0-23): where these sets'
    sigma is more than 15 % off the truth in tissue, the caveat is there (the short train,
    magnitude only, seeds 8 and 9: a background with a ghost tail, the floor refused; SENSE
    R 3 with everything, seeds 16 and 22, were 1.21 and 0.71 x without one, 0.80 with
    phase)."""
    body = make(seed)
    signal = body.signal if parts == "phase" else None
    estimate = all_candidates(body.magnitude, body.echo_times, signal=signal).chosen()
    ratio = over_truth(body, estimate)
    assert abs(ratio - 1) <= 0.15 or estimate.caveat, (ratio, estimate.method)


@pytest.mark.parametrize("coils", [8, 32])
def test_no_caveat_where_a_clean_background_agrees(coils: int) -> None:
    """Coil phantoms of 8 and 32 coils: the magnitude floor's share that decays is 18-25 %
    (the noncentral chi's bias); the decayed tail (about the noise) takes its place, and
    without the tail the clean background agrees with the floor: no caveat either way. Given
    a background suspect of ghosts (above 1.2 x the echo differences) instead, the floor
    carries it."""
    phantom = make_coil_phantom((48, 48, 4), coils=coils, seed=2)
    found = all_candidates(phantom.magnitude, phantom.echo_times)
    assert found.thermal.caveat and found.background.sigma is not None
    assert not found.chosen().caveat
    without_tail = cross_check(found.background, found.differences, found.residuals, found.thermal)
    assert not without_tail.caveat
    ghosted = NoiseEstimate(1.5 * found.background.sigma, 1000, method="background-quantiles")
    suspect = cross_check(ghosted, found.differences, found.residuals, found.thermal)
    assert "magnitude cannot tell" in suspect.caveat


# --- the real GE kidney (12 echoes, magnitude, real and imaginary) --------------------------------


@pytest.fixture(scope="module")
def ge_echoes(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(magnitude, real + i imaginary, TE) of the shared GE set, echoes last, by TE."""
    bids = tmp_path_factory.mktemp("tail-ge") / "bids"
    source = SHARED_DATA / "dicom" / "ge-mr750-kidney-megre"
    assert main(["convert", str(source), str(bids), "--participant-label", "ge", "-q"]) == 0
    parts, te = echo_parts(bids / "sub-ge" / "anat", ("mag", "real", "imag"))
    return parts["mag"], parts["real"] + 1j * parts["imag"], te


@pytest.mark.realdata
def test_ge_the_tail_is_not_the_tissue_noise_and_magnitude_alone_says_so(
    ge_echoes: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """The GE kidney's decayed voxels hold noise of about 10, its tissue about 26 (the
    across-model residual; the echo differences in air 12): the tail stays a cross-check
    both ways; magnitude alone keeps the floor (22.4) and carries the caveat (the tail
    against the floor's map where its voxels lie: 0.36 x, and it does not follow it), with the
    real and imaginary parts the across-model residual is used without one, and without
    its map."""
    magnitude, signal, te = ge_echoes
    alone = all_candidates(magnitude, te).chosen()
    assert alone.method == "residual-floor" and "magnitude cannot tell" in alone.caveat
    assert alone.sigma_map is None  # its tail lies at 0.36 x the floor's map where it lies
    assert alone.candidates[TAIL] < 0.7 * alone.candidates["residual-floor"]
    assert alone.bounds[TAIL].startswith("cross-check")
    both = all_candidates(magnitude, te, signal=signal).chosen()
    assert both.method == "across-model" and not both.caveat
    assert both.sigma_map is None  # 86 % decays and its tail does not follow the map (-0.5)
    assert both.bounds[TAIL].startswith("cross-check")


# --- the run says so -----------------------------------------------------------------------------


def fitted_body(root: Path, body: BodySet) -> SetFit:
    """The app's fit of ``body``'s magnitude echoes written as a BIDS set."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    write_megre(root, body, "01")  # type: ignore[arg-type]
    (echo_set,) = find_echo_sets(root, None, None, {})
    return fit_echo_set(echo_set, check_geometry(echo_set.paths), Options())


def test_the_caveat_is_warned_and_in_the_sidecars(tmp_path: Path) -> None:
    """The caveat reaches the run's warnings and the map sidecars (``NoiseSigmaCaveat``);
    a clean set has neither."""
    flagged = fitted_body(tmp_path / "flagged", short_train(0))
    assert "magnitude cannot tell" in flagged.fit_info["NoiseSigmaCaveat"]
    assert any("magnitude cannot tell" in w for w in flagged.warnings)
    clean = fitted_body(tmp_path / "clean", make_body_set(seed=0))
    assert "NoiseSigmaCaveat" not in clean.fit_info
    assert not any("magnitude cannot tell" in w for w in clean.warnings)


def test_the_caveat_is_in_the_record_and_beside_sigma_on_the_page(tmp_path: Path) -> None:
    """A whole participant run: the record has the caveat in its own field, and the page
    says it in the row that gives sigma."""
    root, out = tmp_path / "bids", tmp_path / "out"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    write_megre(root, short_train(0), "01")  # type: ignore[arg-type]
    assert main([str(root), str(out), "participant", "--skip-bids-validation", "-q"]) == 0
    (record,) = load_published(out)
    assert "magnitude cannot tell" in record.noise_caveat
    page = (out / "sub-01.html").read_text(encoding="utf-8")
    row = re.search(r'<th scope="row">Noise level σ</th><td>([^<]*)</td>', page)
    assert row is not None and f"caveat: {record.noise_caveat}" in html.unescape(row.group(1))
