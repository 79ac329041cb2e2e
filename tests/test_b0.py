"""Through-slice gradient correction: against the simulator that integrates through slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2starmap.b0 import correction as b0
from t2starmap.b0.correction import SliceGeometry
from t2starmap.b0.profiles import SliceProfile, dephasing_factor
from t2starmap.errors import NotApplicableError
from t2starmap.fit import Compute, FitResult, NoiseModel, fit_complex, fit_t2star, frequency_limit
from t2starmap.fit.limits import Method
from t2starmap.fit.phase import FieldMap, analyse_phase
from t2starmap.fit.status import Correction as Status
from t2starmap.sim.phantoms import DEFAULT_ECHO_TIMES
from t2starmap.sim.slices import SlicePhantom, make_slice_phantom
from tests.support.factors import rect_factor

TE = np.asarray(DEFAULT_ECHO_TIMES)


def correct(
    magnitude: np.ndarray,
    field: FieldMap,
    te: np.ndarray,
    slices: SliceGeometry,
    *,
    method: Method = "nlls-gaussian",
    noise_sigma: float | None = None,
    dtype: torch.dtype = torch.float32,
    threshold: float = b0.FACTOR_THRESHOLD,
) -> b0.ThroughSliceCorrection:
    """The correction as the app runs it: the uncorrected fit first, then the corrected one
    started from it."""
    uncorrected = fit_t2star(
        magnitude,
        te,
        method=method,
        noise=NoiseModel(sigma=noise_sigma),
        compute=Compute(dtype=dtype),
    )
    return b0.correct_through_slice(
        magnitude,
        te,
        slices,
        field=field,
        uncorrected=uncorrected,
        compute=Compute(dtype=dtype),
        threshold=threshold,
    )


def known_field(frequency_hz: np.ndarray, untrusted: np.ndarray | None = None) -> FieldMap:
    """A field map known everywhere (unwrapped), trusted except where ``untrusted``."""
    bad = np.zeros(frequency_hz.shape, bool) if untrusted is None else untrusted
    return FieldMap(np.asarray(frequency_hz, np.float64), bad, None, "known")


@pytest.fixture(scope="module")
def phantom() -> SlicePhantom:
    """SNR 100, 2D slices of 3 mm, field change across the slice 0..24 Hz, wrapped field."""
    return make_slice_phantom((24, 24, 6), snr=100.0, seed=1)


@pytest.fixture(scope="module", params=["complex fit", "phase differences"])
def correction(phantom: SlicePhantom, request: pytest.FixtureRequest) -> b0.ThroughSliceCorrection:
    """The correction with the field map of the complex fit, and with the closed form."""
    signal = phantom.magnitude * np.exp(1j * phantom.phase)
    if request.param == "complex fit":
        field = FieldMap.from_fit(
            fit_complex(signal, TE, noise=NoiseModel(sigma=phantom.sigma)), TE
        )
    else:
        found = analyse_phase(signal, TE, noise_sigma=phantom.sigma).field_map()
        assert found is not None
        field = found
    assert field.method == request.param
    return correct(
        phantom.magnitude,
        field,
        phantom.echo_times,
        SliceGeometry(phantom.affine, 2, "2D", phantom.slice_thickness_mm),
        noise_sigma=phantom.sigma,
    )


def _error(result: FitResult, truth: np.ndarray) -> np.ndarray:
    return np.abs(result.r2star.cpu().numpy() / truth - 1.0)


def test_correction_meets_the_targets(
    phantom: SlicePhantom, correction: b0.ThroughSliceCorrection
) -> None:
    corrected = correction.status == Status.CORRECTED
    steep = corrected & (phantom.field_change_hz >= 12.0)
    flat = corrected & (phantom.field_change_hz == 0.0)
    assert steep.sum() > 500 and flat.sum() > 300
    after = _error(correction.corrected, phantom.r2star)
    before = _error(correction.uncorrected, phantom.r2star)
    assert np.median(before[steep]) >= 0.15
    assert np.median(after[steep]) <= 0.05
    assert np.median(after[flat]) <= 0.03
    assert not correction.corrected.failed.numpy()[corrected].any()


def test_status_and_uncorrected_voxels(correction: b0.ThroughSliceCorrection) -> None:
    status = correction.status
    assert np.all(status[:, :, [0, -1]] == Status.EDGE_SLICE)
    assert np.all(status[:, :, 1:-1] == Status.CORRECTED)
    edge = status == Status.EDGE_SLICE
    np.testing.assert_array_equal(
        correction.corrected.r2star.numpy()[edge], correction.uncorrected.r2star.numpy()[edge]
    )
    assert not correction.gradient_hz_per_mm[edge].any()
    assert correction.wrap_period_hz == pytest.approx(2.0 * frequency_limit(TE))


def test_gradient_from_the_complex_fit_matches_the_truth(
    phantom: SlicePhantom, correction: b0.ThroughSliceCorrection
) -> None:
    # The field wraps (offset 150 Hz + up to 60 Hz, limit 131 Hz): the rule must unwrap it.
    assert phantom.frequency_hz.max() > frequency_limit(TE)
    inner = correction.status == Status.CORRECTED
    error = np.abs(correction.gradient_hz_per_mm - phantom.gradient_hz_per_mm)[inner]
    assert np.median(error) < 0.05 and error.max() < 0.5


def test_gradient_is_exact_for_a_quadratic_field() -> None:
    ph = make_slice_phantom((6, 5, 7), snr=None, curvature_hz_per_mm2=0.5, samples=4)
    g, valid = b0.through_slice_gradient(ph.frequency_hz, ph.mask, ph.affine, 2)
    assert not valid[:, :, [0, -1]].any() and valid[:, :, 1:-1].all()
    np.testing.assert_allclose(g[valid], ph.gradient_hz_per_mm[valid], atol=1e-3)
    # The spacing comes from the affine unless given: twice the spacing, half the gradient.
    half, _ = b0.through_slice_gradient(ph.frequency_hz, ph.mask, ph.affine, 2, 6.0)
    np.testing.assert_allclose(half[valid], g[valid] / 2.0, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gradient_along_any_axis(axis: int) -> None:
    z = np.arange(5.0) * 2.5  # mm
    field = np.moveaxis(np.broadcast_to(7.0 * z + 3.0, (4, 3, 5)), 2, axis)
    affine = np.diag([2.5, 2.5, 2.5, 1.0])
    g, valid = b0.through_slice_gradient(field, np.ones(field.shape, bool), affine, axis)
    np.testing.assert_allclose(g[valid], 7.0)
    assert valid.sum() == field.size * 3 // 5


def test_wrapped_field_is_unwrapped() -> None:
    period = 250.0
    z = np.arange(8.0) * 3.0
    truth = np.broadcast_to(100.0 + 12.0 * z, (3, 3, 8))  # 100 .. 352 Hz: wraps twice
    wrapped = (truth + period / 2) % period - period / 2
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    mask = np.ones(truth.shape, bool)
    g, valid = b0.through_slice_gradient(wrapped, mask, affine, 2, wrap_period_hz=period)
    np.testing.assert_allclose(g[valid], 12.0, atol=1e-9)
    naive, _ = b0.through_slice_gradient(wrapped, mask, affine, 2)
    assert np.abs(naive[valid] - 12.0).max() > 10.0  # without the rule it is wrong


def test_masked_and_failed_neighbours_are_invalid() -> None:
    field = np.zeros((4, 4, 6))
    mask = np.ones(field.shape, bool)
    mask[0, 0, 3] = False
    failed = np.zeros(field.shape, bool)
    failed[2, 2, 2] = True
    _, valid = b0.through_slice_gradient(field, mask & ~failed, np.eye(4), 2)
    assert not valid[0, 0, 2] and not valid[0, 0, 4] and not valid[0, 0, 3]
    assert not valid[2, 2, 1] and not valid[2, 2, 3] and valid[2, 2, 4]
    status = b0._status(mask, failed, valid, 2)
    assert status[0, 0, 2] == Status.MASK_BORDER and status[0, 0, 3] == Status.OUTSIDE
    assert status[2, 2, 1] == Status.FIELD_UNTRUSTED and status[2, 2, 2] == Status.FIELD_UNTRUSTED
    assert status[1, 1, 0] == Status.EDGE_SLICE and status[1, 1, 2] == Status.CORRECTED


def test_field_map_input_with_failed_voxels_and_3d_geometry() -> None:
    ph = make_slice_phantom((10, 6, 5), snr=None, samples=64, offset_hz=0.0)
    failed = np.zeros(ph.mask.shape, bool)
    failed[9, 2, 2] = True
    # 3D: the slice thickness is the voxel size along Z (3 mm), SliceThickness is ignored.
    out = correct(
        ph.magnitude,
        known_field(ph.frequency_hz, failed),
        ph.echo_times,
        SliceGeometry(ph.affine, 2, "3D", 99.0),
        dtype=torch.float64,
    )
    assert (out.thickness_mm, out.spacing_mm) == (3.0, 3.0) and out.wrap_period_hz is None
    assert np.all(out.status[9, 2, 1:4] == Status.FIELD_UNTRUSTED)
    assert np.all(out.status[9, 3, 1:4] == Status.CORRECTED)
    done = out.status == Status.CORRECTED
    error = _error(out.corrected, ph.r2star)[done]
    assert error.max() < 0.01  # noise-free: only the field's curvature within the slice is left
    steep = done & (ph.field_change_hz >= 12.0)
    assert np.median(_error(out.uncorrected, ph.r2star)[steep]) > 0.15


def test_rect_factor_against_a_numerical_integral() -> None:
    gradient = np.array([0.0, 2.0, 5.0, 9.0, 14.0])  # Hz/mm
    thickness = 3.0
    factor = rect_factor(gradient, thickness, TE)
    assert factor.shape == (5, TE.size)
    z = (np.arange(4000) + 0.5) / 4000 * thickness - thickness / 2  # midpoint rule
    phase = 2j * np.pi * gradient[:, None, None] * z[None, None, :] * TE[None, :, None]
    numeric = np.abs(np.exp(phase).mean(axis=-1))
    np.testing.assert_allclose(factor, numeric, atol=1e-6)
    np.testing.assert_array_equal(factor[0], 1.0)


def test_simulated_signal_follows_the_sinc_for_a_linear_field() -> None:
    ph = make_slice_phantom((8, 4, 5), snr=None, curvature_hz_per_mm2=0.0, samples=512)
    factor = rect_factor(ph.gradient_hz_per_mm, ph.slice_thickness_mm, ph.echo_times)
    decay = ph.s0[..., None] * np.exp(-ph.echo_times * ph.r2star[..., None])
    np.testing.assert_allclose(ph.magnitude / decay, factor, atol=2e-5)


def test_geometry_2d_and_3d() -> None:
    affine = np.diag([1.0, 1.0, 3.5, 1.0])
    assert b0.slice_geometry("2D", affine, slice_thickness_mm=3.0) == (3.0, 3.5)
    assert b0.slice_geometry(
        "2D", affine, slice_thickness_mm=3.0, spacing_between_slices_mm=4.0
    ) == (3.0, 4.0)
    assert b0.slice_geometry("3D", affine, slice_thickness_mm=9.0) == (3.5, 3.5)
    assert b0.slice_geometry("3D", affine, 0) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("kind", "thickness", "match"),
    [("2D", None, "SliceThickness"), (None, 3.0, "MRAcquisitionType"), ("2D", -1.0, "> 0")],
)
def test_missing_metadata_is_a_clear_error(
    kind: str | None, thickness: float | None, match: str
) -> None:
    with pytest.raises(NotApplicableError, match=match):
        b0.slice_geometry(kind, np.eye(4), slice_thickness_mm=thickness)


def _run(mag: np.ndarray, field: np.ndarray, te: np.ndarray) -> None:
    correct(mag, known_field(field), te, SliceGeometry(np.eye(4), 2, "2D", 1.0))


def test_bad_input_raises() -> None:
    mag = np.ones((4, 4, 5, TE.size), np.float32)
    with pytest.raises(ValueError, match="field map shape"):
        _run(mag, np.zeros((4, 4, 4)), TE)
    with pytest.raises(ValueError, match="at least 3 slices"):
        _run(mag[:, :, :1], np.zeros((4, 4, 1)), TE)
    with pytest.raises(ValueError, match="at least 3 echoes"):
        _run(mag[..., :2], np.zeros((4, 4, 5)), TE[:2])
    with pytest.raises(ValueError, match="echo times"):
        _run(mag, np.zeros((4, 4, 5)), TE[:-1])
    with pytest.raises(ValueError, match="at least 3 slices"):
        b0.through_slice_gradient(np.zeros((4, 4, 2)), np.ones((4, 4, 2), bool), np.eye(4))
    with pytest.raises(ValueError, match="mask shape"):
        b0.through_slice_gradient(np.zeros((4, 4, 5)), np.ones((4, 4, 4), bool), np.eye(4))
    with pytest.raises(ValueError, match="thickness"):
        dephasing_factor(SliceProfile("rect"), np.zeros(3), 0.0, TE)


def test_voxels_left_with_one_echo_are_flagged_and_uncorrected() -> None:
    ph = make_slice_phantom((10, 4, 4), snr=None, samples=32, offset_hz=0.0)
    out = correct(
        ph.magnitude,
        known_field(ph.frequency_hz),
        ph.echo_times,
        SliceGeometry(ph.affine, 2, "2D", 3.0),
        threshold=0.995,  # only the first echo (TE 2 ms) keeps |F| >= 0.995 where dF >= 12 Hz
    )
    inner = out.status[:, :, 1:-1]
    steep = ph.field_change_hz[:, :, 1:-1] >= 12.0
    assert np.all(inner[steep] == Status.FEW_ECHOES)
    assert np.all(inner[ph.field_change_hz[:, :, 1:-1] == 0.0] == Status.CORRECTED)
    few = out.status == Status.FEW_ECHOES
    np.testing.assert_array_equal(
        out.corrected.r2star.numpy()[few], out.uncorrected.r2star.numpy()[few]
    )


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kind", ["rect", "sinc"])
def test_the_factor_is_computed_where_the_correction_applies_alone(
    workers: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """|F| at the voxels corrected, in chunks on threads: the whole-volume values there, 0
    elsewhere."""
    from t2starmap.b0.profiles import SliceProfile, dephasing_factor

    monkeypatch.setattr(b0, "FACTOR_CHUNK", 37)
    rng = np.random.default_rng(3)
    gradient = rng.normal(0.0, 20.0, (9, 8, 5))
    valid = rng.random((9, 8, 5)) < 0.6
    profile = SliceProfile(kind, parameter=2.7 if kind == "sinc" else None)
    te = np.asarray(DEFAULT_ECHO_TIMES)
    got = b0._factor_where(valid, profile, gradient, 2.5, te, workers)
    whole = np.abs(dephasing_factor(profile, gradient, 2.5, te))
    assert got.shape == (*valid.shape, te.size)
    np.testing.assert_array_equal(got[valid], whole[valid])
    assert not got[~valid].any()
