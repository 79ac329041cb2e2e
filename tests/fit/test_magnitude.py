"""The fitting engine on seeded synthetic data with known truth (see t2starmap.sim.phantoms).

Every test that fits runs once per compute device (the ``device`` fixture of conftest: "cpu",
and "cuda" where torch sees a GPU); the maps are moved to the CPU before they are checked.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import t2starmap.fit.magnitude as fit_module
from t2starmap import FitResult, fit_t2star
from t2starmap.fit import (
    MAGNITUDE_METHODS,
    METHODS,
    T2STAR_MAX,
    T2STAR_MIN,
    Compute,
    EchoSpacingError,
    Failure,
    NoiseModel,
    fit_complex,
    resolve_device,
)
from t2starmap.fit.models import Exponential
from t2starmap.sim.phantoms import add_rician_noise, decay, make_phantom

MAPS = ("t2star", "r2star", "s0", "rmse", "t2star_se", "r2star_se", "s0_se")
TE_11 = np.linspace(0.002, 0.040, 11)


def tensors(result: FitResult) -> dict[str, torch.Tensor]:
    """The result's maps (every tensor field), by field name."""
    values = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return {name: value for name, value in values.items() if isinstance(value, torch.Tensor)}


def on_cpu(result: FitResult) -> FitResult:
    """The same result with every map moved to the CPU (to compare with NumPy)."""
    moved = {name: value.cpu() for name, value in tensors(result).items()}
    return dataclasses.replace(result, **moved)  # type: ignore[arg-type]


def fit(device: str, *args: object, **kwargs: object) -> FitResult:
    """``fit_t2star`` on ``device``; checks the maps were computed there, returns them on the
    CPU."""
    compute = dataclasses.replace(kwargs.pop("compute", Compute()), device=device)  # type: ignore[type-var]
    result = fit_t2star(*args, **kwargs, compute=compute)  # type: ignore[arg-type]
    assert result.device.startswith(device), result.device
    places = {name: value.device.type for name, value in tensors(result).items()}
    assert set(MAPS) <= set(places) and set(places.values()) == {device}, places
    return on_cpu(result)


def rel_err(result: FitResult, truth: np.ndarray, where: np.ndarray) -> np.ndarray:
    return result.t2star.cpu().numpy()[where] / truth[where] - 1.0


def draws(t2stars: np.ndarray, n: int, te: np.ndarray, snr: float, seed: int) -> np.ndarray:
    """n Rician noise draws of each T2* (S0 = 1000), as (len(t2stars) * n, E) float32."""
    truth = np.repeat(t2stars, n)
    clean = decay(np.full(truth.shape, 1000.0), truth, te)
    magnitude, _ = add_rician_noise(clean, 1000.0 / snr, np.random.default_rng(seed))
    return magnitude


# --- accuracy --------------------------------------------------------------------------------


def test_accuracy_against_known_truth(device: str) -> None:
    """Issue 2: 11 echoes TE 2-40 ms, T2* 5-100 ms, SNR 50: nlls <= 3 %, better than loglin."""
    ph = make_phantom((48, 48, 8), seed=3)
    errors = {}
    for method, sigma in [("nlls", ph.sigma), ("nlls", None), ("loglin", None)]:
        result = fit(
            device, ph.magnitude, ph.echo_times, method=method, noise=NoiseModel(sigma=sigma)
        )
        errors[(method, sigma is not None)] = float(
            np.median(np.abs(rel_err(result, ph.t2star, ph.mask)))
        )
        assert_only_misfit_false_alarms(result, ph.mask)
    shown = {f"{m}{' +sigma' if s else ''}": f"{100 * e:.2f}%" for (m, s), e in errors.items()}
    assert errors[("nlls", True)] <= 0.03, shown
    assert errors[("nlls", False)] <= 0.03, shown
    assert errors[("nlls", True)] < errors[("loglin", False)], shown


def test_noise_floor_bias_rician_vs_gaussian(device: str) -> None:
    """Issue 4 target: SNR 10, T2* 20-60 ms, 12 echoes TE 3-60 ms: |median bias| <= 2 % for
    the noise-aware default; the Gaussian fit of the same data is clearly biased (long)."""
    te = np.linspace(0.003, 0.060, 12)
    ph = make_phantom((64, 64, 8), te, t2star_range=(0.020, 0.060), snr=10.0, seed=11)
    noise_aware = fit(device, ph.magnitude, te, noise=NoiseModel(sigma=ph.sigma))
    gaussian = fit(
        device, ph.magnitude, te, method="nlls-gaussian", noise=NoiseModel(sigma=ph.sigma)
    )
    assert noise_aware.noise_model == "rician"
    assert gaussian.noise_model == "gaussian"
    bias_rician = float(np.median(rel_err(noise_aware, ph.t2star, ph.mask)))
    bias_gauss = float(np.median(rel_err(gaussian, ph.t2star, ph.mask)))
    shown = f"median relative bias: rician {bias_rician:+.2%}, gaussian {bias_gauss:+.2%}"
    print(shown)
    assert abs(bias_rician) <= 0.02, shown
    assert bias_gauss > 0.04, shown
    assert abs(bias_gauss) > 3 * abs(bias_rician), shown


def test_without_noise_level_default_falls_back_to_gaussian(device: str) -> None:
    ph = make_phantom((16, 16, 4), seed=1)
    aware = fit(device, ph.magnitude, ph.echo_times, noise=NoiseModel(sigma=ph.sigma))
    plain = fit(device, ph.magnitude, ph.echo_times)
    explicit = fit(device, ph.magnitude, ph.echo_times, method="nlls-gaussian")
    assert (aware.noise_model, aware.noise_sigma) == ("rician", ph.sigma)
    assert (plain.noise_model, plain.noise_sigma) == ("gaussian", None)
    torch.testing.assert_close(plain.t2star, explicit.t2star)


# --- uncertainty and efficiency (vectorised Monte Carlo: one fit, draws as voxels) ------------

MC_T2STAR = np.array([0.010, 0.020, 0.040, 0.080])
MC_DRAWS = 2000


@pytest.fixture(scope="module")
def monte_carlo(device: str) -> tuple[FitResult, float]:
    """2000 noise draws at SNR 50 of each T2* in 10-80 ms, 11 echoes TE 2-40 ms, fitted once."""
    magnitude = draws(MC_T2STAR, MC_DRAWS, TE_11, snr=50.0, seed=7)
    sigma = 1000.0 / 50.0
    return fit(device, magnitude, TE_11, noise=NoiseModel(sigma=sigma)), sigma


def test_standard_errors_are_calibrated(monte_carlo: tuple[FitResult, float]) -> None:
    """Median reported SE within +-10 % of the observed SD over the draws (T2*, R2*, S0)."""
    result, _ = monte_carlo
    for name in ("t2star", "r2star", "s0"):
        values = getattr(result, name).numpy().reshape(len(MC_T2STAR), MC_DRAWS)
        se = getattr(result, f"{name}_se").numpy().reshape(len(MC_T2STAR), MC_DRAWS)
        ratio = np.median(se, axis=1) / values.std(axis=1)
        assert np.all(np.abs(ratio - 1.0) <= 0.10), f"{name}: SE/SD per T2* {ratio.round(3)}"


def crlb_t2star(t2star: float, te: np.ndarray, s0: float, sigma: float) -> float:
    """Analytic Cramer-Rao bound on the SD of T2* for S0 exp(-TE/T2*) in Gaussian noise:
    Fisher J^T J / sigma^2 in (S0, R2*), then the delta method. (The Rician bound is higher,
    so this is the stricter yardstick.)"""
    a = s0 * np.exp(-te / t2star)
    jac = np.stack([a / s0, -te * a], axis=1)
    cov = np.linalg.inv(jac.T @ jac / sigma**2)
    return float(np.sqrt(cov[1, 1]) * t2star**2)


def test_efficiency_against_cramer_rao_bound(monte_carlo: tuple[FitResult, float]) -> None:
    result, sigma = monte_carlo
    values = result.t2star.numpy().reshape(len(MC_T2STAR), MC_DRAWS)
    bound = np.array([crlb_t2star(t, TE_11, 1000.0, sigma) for t in MC_T2STAR])
    ratio = values.std(axis=1) / bound
    assert np.all(np.abs(ratio - 1.0) <= 0.10), f"SD / CRLB per T2* {ratio.round(3)}"
    assert_only_misfit_false_alarms(result)


def assert_only_misfit_false_alarms(result: FitResult, where: np.ndarray | None = None) -> None:
    """Mono-exponential voxels: no failure but the goodness-of-fit test's false alarms, at
    most 1 % (its nominal rate is 0.1 %; the squared Rician magnitude has a heavier tail than
    chi-square, measured 0.4-0.6 % for the noise-aware fit)."""
    reason = result.reason.numpy() if where is None else result.reason.numpy()[where]
    assert not np.any(reason & np.uint8(0xFF ^ int(Failure.MISFIT))), np.unique(reason)
    assert np.mean(reason != 0) <= 0.01, np.mean(reason != 0)


def test_residual_standard_error_without_noise_level(device: str) -> None:
    """Without a noise level the residual variance scales the SE: still roughly calibrated."""
    magnitude = draws(np.array([0.030]), 2000, TE_11, snr=50.0, seed=5)
    result = fit(device, magnitude, TE_11)
    ratio = float(np.median(result.t2star_se.numpy()) / result.t2star.numpy().std())
    assert 0.85 <= ratio <= 1.15, ratio


# --- ARLO ------------------------------------------------------------------------------------


def test_arlo_accurate_on_even_echoes(device: str) -> None:
    ph = make_phantom((32, 32, 6), seed=4)
    result = fit(device, ph.magnitude, ph.echo_times, method="arlo")
    assert result.method == "arlo"
    assert np.median(np.abs(rel_err(result, ph.t2star, ph.mask))) <= 0.04


def test_arlo_exact_on_noiseless_decay(device: str) -> None:
    te = np.linspace(0.002, 0.040, 11)
    truth = np.array([0.01, 0.03, 0.08])
    result = fit(
        device,
        decay(np.full(3, 500.0), truth, te),
        te,
        method="arlo",
        compute=Compute(dtype=torch.float64),
    )
    np.testing.assert_allclose(result.t2star.numpy(), truth, rtol=2e-3)


@pytest.mark.parametrize(
    ("te", "named"),
    [
        ([0.002, 0.004, 0.007, 0.010], "2, 3, 3"),
        ([0.003, 0.005], "at least 3"),
    ],
)
def test_arlo_refuses_uneven_spacing(device: str, te: list[float], named: str) -> None:
    signal = decay(np.array([1000.0]), np.array([0.02]), np.array(te))
    with pytest.raises(EchoSpacingError, match=named):
        fit(device, signal, te, method="arlo")
    assert issubclass(EchoSpacingError, ValueError)


def test_arlo_accepts_unsorted_even_echoes(device: str) -> None:
    te = np.linspace(0.002, 0.020, 6)
    signal = decay(np.array([1000.0]), np.array([0.02]), te)
    perm = np.array([3, 0, 5, 1, 4, 2])
    result = fit(device, signal[:, perm], te[perm], method="arlo")
    assert result.t2star.item() == pytest.approx(0.02, rel=2e-3)


# --- robustness: special inputs, every method ------------------------------------------------

GOOD_T2STAR = np.array([0.008, 0.025, 0.060])


def special_voxels(te: np.ndarray) -> dict[str, np.ndarray]:
    n = te.size
    return {
        "zero": np.zeros(n),
        "nan": np.where(np.arange(n) == 2, np.nan, 800.0 * np.exp(-te / 0.03)),
        "inf": np.where(np.arange(n) == 1, np.inf, 800.0 * np.exp(-te / 0.03)),
        "negative": -800.0 * np.exp(-te / 0.03),
        "one_negative_sample": np.where(np.arange(n) == 5, -30.0, 800.0 * np.exp(-te / 0.03)),
        "constant": np.full(n, 600.0),
        "rising": 100.0 * np.exp(te / 0.02),
        "t2star_far_below_first_te": decay(np.array(1000.0), np.array(5e-5), te),
        "t2star_far_above_last_te": decay(np.array(1000.0), np.array(100.0), te),
        "single_positive_echo": np.where(np.arange(n) == 0, 900.0, 0.0),
    }


@pytest.mark.parametrize("method", MAGNITUDE_METHODS)
@pytest.mark.parametrize("case", list(special_voxels(TE_11)))
def test_special_voxel_flagged_and_neighbours_unaffected(
    device: str, method: str, case: str
) -> None:
    special = special_voxels(TE_11)[case].astype(np.float32)
    rng = np.random.default_rng(0)
    good, _ = add_rician_noise(decay(np.full(3, 1000.0), GOOD_T2STAR, TE_11), 20.0, rng)
    batch = np.stack([good[0], special, good[1], good[2]])
    sigma = 20.0
    together = fit(device, batch, TE_11, method=method, noise=NoiseModel(sigma=sigma))
    alone = fit(device, good, TE_11, method=method, noise=NoiseModel(sigma=sigma))
    for name in MAPS:
        value = getattr(together, name).numpy()
        assert np.all(np.isfinite(value)) and np.all(value >= 0), (name, value)
        # Equal up to float32 rounding (vectorised and scalar loops sum in different orders).
        np.testing.assert_allclose(value[[0, 2, 3]], getattr(alone, name).numpy(), 1e-5, 0, name)
    assert together.failed.tolist() == [False, True, False, False]
    t2 = together.t2star.numpy()[1]
    assert t2 == 0.0 or T2STAR_MIN <= t2 <= T2STAR_MAX


def test_two_echoes_fit_exactly(device: str) -> None:
    te = np.array([0.004, 0.012])
    truth = np.array([0.01, 0.02, 0.05])
    signal = decay(np.full(3, 700.0), truth, te)
    for method in ("nlls", "nlls-gaussian", "wls", "loglin"):
        result = fit(device, signal, te, method=method, compute=Compute(dtype=torch.float64))
        np.testing.assert_allclose(result.t2star.numpy(), truth, rtol=1e-6, err_msg=method)
        np.testing.assert_allclose(result.s0.numpy(), 700.0, rtol=1e-6, err_msg=method)
        assert not result.failed.any()
        # Nothing is left to estimate a residual variance from.
        assert not result.t2star_se.any()
    with_sigma = fit(device, signal, te, noise=NoiseModel(sigma=5.0))
    assert (with_sigma.t2star_se > 0).all()
    # The noise-aware fit matches sqrt(A^2 + 2 sigma^2) to M: still exact with two echoes.
    assert with_sigma.noise_model == "rician" and not with_sigma.failed.any()
    assert float(with_sigma.rmse.max()) < 1e-3


@pytest.mark.parametrize("method", MAGNITUDE_METHODS)
def test_unsorted_echo_times_give_the_sorted_result(device: str, method: str) -> None:
    ph = make_phantom((8, 8, 2), seed=2)
    perm = np.random.default_rng(1).permutation(ph.echo_times.size)
    ordered = fit(
        device, ph.magnitude, ph.echo_times, method=method, noise=NoiseModel(sigma=ph.sigma)
    )
    shuffled = fit(
        device,
        ph.magnitude[..., perm],
        ph.echo_times[perm],
        method=method,
        noise=NoiseModel(sigma=ph.sigma),
    )
    for name in MAPS:
        torch.testing.assert_close(getattr(shuffled, name), getattr(ordered, name))


def test_mask_leaves_outside_zero_and_shapes_follow_signal(device: str) -> None:
    ph = make_phantom((12, 10, 3), seed=5)
    result = fit(
        device, ph.magnitude, ph.echo_times, mask=ph.mask, noise=NoiseModel(sigma=ph.sigma)
    )
    for name in MAPS:
        value = getattr(result, name)
        assert value.shape == ph.mask.shape and value.dtype == torch.float32
        assert not value.numpy()[~ph.mask].any()
    assert not result.failed.numpy()[~ph.mask].any()


def test_chunking_does_not_change_results(device: str) -> None:
    ph = make_phantom((10, 10, 3), seed=6)
    whole = fit(device, ph.magnitude, ph.echo_times, noise=NoiseModel(sigma=ph.sigma))
    chunked = fit(
        device,
        ph.magnitude,
        ph.echo_times,
        noise=NoiseModel(sigma=ph.sigma),
        compute=Compute(chunk_size=37),
    )
    # Up to float32 rounding, in the object (noise-only air does not converge and may wander).
    good = torch.from_numpy(ph.mask)
    assert torch.equal(chunked.failed[good], whole.failed[good])
    for name in MAPS:
        torch.testing.assert_close(
            getattr(chunked, name)[good], getattr(whole, name)[good], rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("method", MAGNITUDE_METHODS)
def test_input_is_never_modified(device: str, method: str) -> None:
    """The kernels work in place, on their own copy: not on the caller's array, whatever its
    type or shape (a single voxel included)."""
    ph = make_phantom((6, 5, 2), seed=13)
    signal = ph.magnitude.astype(np.float32)
    signal[0, 0, 0, 3] = np.nan
    for given in (signal, torch.from_numpy(signal.copy()), signal[:1, :1, :1]):
        before = torch.as_tensor(given).clone().numpy()
        fit(device, given, ph.echo_times, method=method, noise=NoiseModel(sigma=ph.sigma))
        np.testing.assert_array_equal(torch.as_tensor(given).numpy(), before)


def test_float64_and_torch_input(device: str) -> None:
    ph = make_phantom((6, 6, 2), seed=8)
    result = fit(
        device,
        torch.from_numpy(ph.magnitude),
        torch.tensor(ph.echo_times),
        compute=Compute(dtype=torch.float64),
    )
    assert result.t2star.dtype == torch.float64


# --- argument checks -------------------------------------------------------------------------


def test_methods_listed_for_the_cli() -> None:
    assert METHODS[0] == "nlls"
    assert set(METHODS) == {"nlls", "nlls-gaussian", "wls", "loglin", "arlo", "complex"}
    assert set(MAGNITUDE_METHODS) == set(METHODS) - {"complex"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "adam"}, "unknown fit method"),
        ({"noise": {"sigma": 0.0}}, "noise sigma"),
        ({"noise": {"sigma": float("nan")}}, "noise sigma"),
        ({"noise": {"coils": 0.5}}, "noise coils"),
        ({"compute": Compute(chunk_size=0)}, "chunk_size"),
        ({"mask": np.ones((2, 2), bool)}, "mask shape"),
        ({"bipolar": True}, "bipolar is a property of the complex fit"),
    ],
)
def test_bad_arguments(device: str, kwargs: dict[str, object], message: str) -> None:
    signal = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        if isinstance(kwargs.get("noise"), dict):  # the noise object refuses it as it is made
            kwargs = {**kwargs, "noise": NoiseModel(**kwargs["noise"])}  # type: ignore[arg-type]
        fit(device, signal, [0.001, 0.002, 0.003, 0.004], **kwargs)  # type: ignore[arg-type]


def test_complex_through_fit_t2star_passes_bipolar_and_refuses_coils() -> None:
    """``fit_t2star(method="complex")`` is ``fit_complex`` with every argument passed on: on
    data whose even echoes carry a phase offset, ``bipolar`` changes the fit, both ways."""
    rng = np.random.default_rng(5)
    te = 0.003 + 0.004 * np.arange(8)
    n = 200
    r2 = rng.uniform(20.0, 80.0, n)[:, None]
    even = (np.arange(8) % 2 == 1)[None, :]
    phase = 2 * np.pi * rng.uniform(-40, 40, n)[:, None] * te + 1.5 * even
    clean = 1000.0 * np.exp(-te * r2) * np.exp(1j * phase)
    signal = clean + 5.0 * (
        rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)
    )
    signal = signal.astype(np.complex64)
    noise = NoiseModel(5.0)
    fits = {}
    for bipolar in (False, True):
        via = fit_t2star(signal, te, method="complex", noise=noise, bipolar=bipolar)
        direct = fit_complex(signal, te, noise=noise, bipolar=bipolar)
        assert torch.equal(via.r2star, direct.r2star) and torch.equal(via.reason, direct.reason)
        fits[bipolar] = np.median(np.abs(via.r2star.numpy() / r2[:, 0] - 1.0))
    assert fits[True] < 0.02 < fits[False], fits  # the offset, modelled or not
    with pytest.raises(ValueError, match="no coil count"):
        fit_t2star(signal, te, method="complex", noise=NoiseModel(5.0, coils=4.0))


def test_echo_count_mismatch(device: str) -> None:
    with pytest.raises(ValueError, match="3 echoes"):
        fit(device, np.ones((2, 3)), [0.001, 0.002])


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


# --- Levenberg-Marquardt: the voxels still iterating are gathered -------------------------


def test_voxels_still_iterating_are_gathered_without_changing_results(
    device: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once most voxels of a chunk have converged, LM goes on with the rest only; each voxel's
    result is still what it gets when fitted on its own."""
    sizes: list[int] = []
    original = Exponential.evaluate

    def recording(self: Exponential, data: tuple[torch.Tensor, ...], *args: object) -> object:
        sizes.append(data[0].shape[1])
        return original(self, data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Exponential, "evaluate", recording)
    rng = np.random.default_rng(4)
    truth = np.exp(rng.uniform(np.log(0.004), np.log(0.15), 400))
    signal, _ = add_rician_noise(decay(np.full(truth.shape, 1000.0), truth, TE_11), 60.0, rng)
    together = fit(device, signal, TE_11, noise=NoiseModel(sigma=60.0))
    assert sizes[0] == truth.size and min(sizes) < truth.size // 2, sizes
    sizes.clear()
    alone = [
        fit(device, signal[k : k + 1], TE_11, noise=NoiseModel(sigma=60.0))
        for k in range(0, 400, 7)
    ]
    assert max(sizes) == 1
    for name in MAPS:
        expected = np.concatenate([getattr(r, name).numpy() for r in alone])
        got = getattr(together, name).numpy()[::7]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0, err_msg=name)
    assert together.failed.numpy()[::7].tolist() == [bool(r.failed[0]) for r in alone]


@pytest.mark.parametrize("method", ["loglin", "wls"])
def test_log_linear_standard_errors_are_calibrated(device: str, method: str) -> None:
    """The sandwich SE of the log-linear fits (not the signal model's bound, which would
    understate an ordinary log-linear fit's spread by up to 2-3x)."""
    t2stars = np.array([0.020, 0.040, 0.080])
    magnitude = draws(t2stars, MC_DRAWS, TE_11, snr=50.0, seed=13)
    result = fit(device, magnitude, TE_11, method=method, noise=NoiseModel(sigma=20.0))
    values = result.t2star.numpy().reshape(len(t2stars), MC_DRAWS)
    se = result.t2star_se.numpy().reshape(len(t2stars), MC_DRAWS)
    ratio = np.median(se, axis=1) / values.std(axis=1)
    assert np.all(np.abs(ratio - 1.0) <= 0.10), f"{method}: SE/SD per T2* {ratio.round(3)}"


# --- the GPU against the CPU -----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("method", MAGNITUDE_METHODS)
def test_cuda_matches_cpu_on_every_map(method: str) -> None:
    """Same data on CUDA and CPU: T2*, R2*, S0, RMSE and the three standard errors agree in
    the object (median relative difference <= 1e-4, 99th percentile <= 5e-3: the two stop
    their iterations at slightly different points), and the failure flags nearly everywhere."""
    ph = make_phantom((24, 24, 6), seed=12)
    cpu = fit("cpu", ph.magnitude, ph.echo_times, method=method, noise=NoiseModel(sigma=ph.sigma))
    gpu = fit("cuda", ph.magnitude, ph.echo_times, method=method, noise=NoiseModel(sigma=ph.sigma))
    inside = ph.mask & ~cpu.failed.numpy() & ~gpu.failed.numpy()
    assert inside.sum() > 0.9 * ph.mask.sum()
    for name in MAPS:
        a = getattr(cpu, name).numpy()[inside].astype(np.float64)
        b = getattr(gpu, name).numpy()[inside].astype(np.float64)
        assert np.all(np.isfinite(b)), name
        scale = np.maximum(np.abs(a), np.finfo(np.float32).tiny)
        diff = np.abs(b - a) / scale
        shown = f"{name}: median {np.median(diff):.2e}, p99 {np.quantile(diff, 0.99):.2e}"
        assert np.median(diff) <= 1e-4, shown
        assert np.quantile(diff, 0.99) <= 5e-3, shown
    assert (gpu.failed != cpu.failed).float().mean() < 1e-3


# --- noncentral chi: root-sum-of-squares magnitudes of L coils (issue 11) ---------------------


def chi_draws(t2stars: np.ndarray, n: int, te: np.ndarray, snr: float, coils: int, seed: int):
    """n draws of each T2* of a root-sum-of-squares magnitude of ``coils`` coils (S0 = 1000,
    per-coil sigma 1000 / snr): sqrt(|A + n_1|^2 + sum_l>1 |n_l|^2), as (len * n, E) float32."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(t2stars, n)
    clean = decay(np.full(truth.shape, 1000.0), truth, te)
    sigma = 1000.0 / snr
    power = np.zeros(clean.shape)
    for k in range(coils):
        z = (clean if k == 0 else 0.0) + sigma * (
            rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)
        )
        power += np.abs(z) ** 2
    return np.sqrt(power).astype(np.float32), sigma


@pytest.fixture(scope="module")
def chi_monte_carlo() -> tuple[FitResult, np.ndarray]:
    """2000 draws at SNR 20 of each T2* in 10-80 ms, 8 coils, 11 echoes TE 2-40 ms."""
    magnitude, sigma = chi_draws(MC_T2STAR, MC_DRAWS, TE_11, snr=20.0, coils=8, seed=13)
    return fit_t2star(magnitude, TE_11, noise=NoiseModel(sigma=sigma, coils=8)), magnitude


def test_noncentral_chi_standard_errors_are_calibrated(
    chi_monte_carlo: tuple[FitResult, np.ndarray],
) -> None:
    """Median reported SE within +-10 % of the observed SD over the draws (T2*, R2*, S0)."""
    result, _ = chi_monte_carlo
    assert result.noise_model == "noncentral-chi" and result.noise_coils == 8.0
    for name in ("t2star", "r2star", "s0"):
        values = getattr(result, name).numpy().reshape(len(MC_T2STAR), MC_DRAWS)
        se = getattr(result, f"{name}_se").numpy().reshape(len(MC_T2STAR), MC_DRAWS)
        ratio = np.median(se, axis=1) / values.std(axis=1)
        assert np.all(np.abs(ratio - 1.0) <= 0.10), f"{name}: SE/SD per T2* {ratio.round(3)}"


def test_noncentral_chi_unbiased_where_one_coil_is_not(
    chi_monte_carlo: tuple[FitResult, np.ndarray],
) -> None:
    """Median T2* within 2 % of the truth with L = 8; treating the same data as Rician (L = 1)
    leaves most of the floor in and biases T2* long."""
    result, magnitude = chi_monte_carlo
    values = result.t2star.numpy().reshape(len(MC_T2STAR), MC_DRAWS)
    bias = np.median(values, axis=1) / MC_T2STAR - 1.0
    assert np.all(np.abs(bias) <= 0.02), bias.round(4)
    rician = fit_t2star(magnitude, TE_11, noise=NoiseModel(sigma=result.noise_sigma))
    assert rician.noise_model == "rician" and rician.noise_coils == 1.0
    wrong = np.median(rician.t2star.numpy().reshape(len(MC_T2STAR), MC_DRAWS), axis=1)
    assert wrong[-1] / MC_T2STAR[-1] - 1.0 > 0.03, wrong / MC_T2STAR - 1.0


def test_noise_coils_one_is_the_rician_fit_and_gaussian_ignores_it() -> None:
    ph = make_phantom((12, 12, 3), seed=2)
    default = fit_t2star(ph.magnitude, ph.echo_times, noise=NoiseModel(sigma=ph.sigma))
    one = fit_t2star(ph.magnitude, ph.echo_times, noise=NoiseModel(sigma=ph.sigma, coils=1))
    torch.testing.assert_close(default.t2star, one.t2star, rtol=0, atol=0)
    assert (one.noise_model, one.noise_coils) == ("rician", 1.0)
    plain = fit_t2star(
        ph.magnitude, ph.echo_times, method="nlls-gaussian", noise=NoiseModel(coils=8)
    )
    assert (plain.noise_model, plain.noise_coils) == ("gaussian", 1.0)


@pytest.mark.parametrize("coils", [0.5, 0.0, float("nan"), float("inf"), -2.0])
def test_bad_noise_coils(coils: float) -> None:
    with pytest.raises(ValueError, match="noise coils"):
        fit_t2star(np.ones((2, 3)), [0.01, 0.02, 0.03], noise=NoiseModel(sigma=1.0, coils=coils))


# --- why each voxel failed: the Failure bits of ``reason`` -----------------------------------

#: Each magnitude method as (method, noise sigma): ``nlls`` with a noise level is the noise-aware
#: fit, without one the Gaussian fit.
FLAG_FITS = [
    ("nlls", 5.0),
    ("nlls", None),
    ("nlls-gaussian", None),
    ("wls", None),
    ("loglin", None),
    ("arlo", None),
]
#: 3 to 40 ms at 1 ms: evenly spaced for ARLO, and close enough that a decay with T2* = 0.2 ms
#: still shows from the first echo to the next (ratio exp(-5)). ARLO with wider spacing cannot
#: see it: see test_arlo_cannot_report_a_rate_above_three_over_its_echo_spacing.
TE_FLAGS = 0.003 + 0.001 * np.arange(38)


def planted_voxels(seed: int) -> dict[str, tuple[np.ndarray, int]]:
    """Name -> (voxels (4, E) float32 on TE_FLAGS, the Failure bit each must carry); noisy
    cases are seeded Rician draws (sigma 5), the others noiseless."""
    rng = np.random.default_rng(seed)
    n, e = 4, TE_FLAGS.size
    s0 = 1000.0 * (1.0 + 0.1 * rng.uniform(-1.0, 1.0, n))
    t2 = rng.uniform(0.01, 0.04, n)
    good, _ = add_rician_noise(decay(s0, t2, TE_FLAGS), 5.0, rng)
    growth = s0[:, None] * np.exp(TE_FLAGS / rng.uniform(0.02, 0.05, (n, 1)))  # echo 2 > echo 1
    rising, _ = add_rician_noise(growth, 5.0, rng)
    nan = good.copy()
    nan[np.arange(n), rng.integers(0, e, n)] = np.nan
    negative = good.copy()
    negative[np.arange(n), rng.integers(0, e, n)] = -rng.uniform(1.0, 50.0, n)
    one_echo = np.zeros((n, e))
    one_echo[np.arange(n), rng.integers(0, e, n)] = s0
    cases = {
        "good": (good, 0),
        "rising": (rising, Failure.R2STAR_LOW),
        # Noiseless: with noise above S0 exp(-TE1 / T2*) (= 3e-4 S0 here) the voxel is noise
        # alone, and no fit can tell it from air.
        "fast": (decay(s0, np.full(n, 2e-4), TE_FLAGS), Failure.R2STAR_HIGH),
        "nan": (nan, Failure.BAD_INPUT),
        "negative": (negative, Failure.BAD_INPUT),
        "one_positive_echo": (one_echo, Failure.BAD_INPUT),
    }
    return {k: (v.astype(np.float32), int(bit)) for k, (v, bit) in cases.items()}


@pytest.mark.parametrize(("method", "sigma"), FLAG_FITS)
def test_planted_failures_carry_their_reason(device: str, method: str, sigma: float | None) -> None:
    """Each planted case raises its bit: exactly 0 for good voxels, BAD_INPUT alone for bad
    input; a clamped rate may come with other bits (LM at its bound may also not converge),
    never with the opposite clamp."""
    cases = planted_voxels(seed=11)
    batch = np.concatenate([voxels for voxels, _ in cases.values()])
    result = fit(device, batch, TE_FLAGS, method=method, noise=NoiseModel(sigma=sigma))
    assert result.reason is not None and result.reason.dtype == torch.uint8
    reason = result.reason.numpy().reshape(len(cases), -1)
    clamps = int(Failure.R2STAR_LOW | Failure.R2STAR_HIGH)
    for row, (name, (_, bit)) in zip(reason, cases.items(), strict=True):
        if bit in (0, Failure.BAD_INPUT):
            assert row.tolist() == [bit] * row.size, (name, row)
        else:
            assert np.all(row & clamps == bit), (name, row)
            assert not np.any(row & Failure.BAD_INPUT), (name, row)
    np.testing.assert_array_equal(result.failed.numpy(), result.reason.numpy() != 0)


@pytest.mark.parametrize(("method", "sigma"), FLAG_FITS)
def test_s0_nonpositive_flagged(device: str, method: str, sigma: float | None) -> None:
    """A decay under the noise-aware fit's floor: M^2 below 2 sigma^2 at every echo leaves
    S0^2 <= 0. The other fits of a positive signal cannot give S0 <= 0 (the log-linear S0 is an
    exponential; LM starts there and a step is kept only where it lowers the cost), so for
    them the same voxels must not carry the bit."""
    rng = np.random.default_rng(12)
    floor = rng.uniform(0.2, 0.9, (4, TE_FLAGS.size)).astype(np.float32) * 5.0
    result = fit(device, floor, TE_FLAGS, method=method, noise=NoiseModel(sigma=sigma))
    assert result.reason is not None
    nonpositive = (result.reason.numpy() & Failure.S0_NONPOSITIVE) > 0
    if method == "nlls" and sigma is not None:
        assert nonpositive.all(), result.reason
        assert not result.s0.numpy().any()
    else:
        assert not nonpositive.any(), result.reason
        assert (result.s0.numpy() > 0).all()


@pytest.mark.parametrize(("method", "sigma"), FLAG_FITS)
def test_not_converged_when_lm_is_cut_short(
    device: str, monkeypatch: pytest.MonkeyPatch, method: str, sigma: float | None
) -> None:
    """LM given no iteration stays at the weighted log-linear start, which leaves noisy voxels
    short of the solution: NOT_CONVERGED for the LM fits, every voxel. (One iteration is not
    enough to provoke it everywhere: from that start about a quarter of these voxels meet the
    step tolerance at once.) The closed forms (wls, loglin, arlo) have no iteration to cut and
    never carry the bit."""
    rng = np.random.default_rng(13)
    t2 = rng.uniform(0.005, 0.05, 64)
    signal, _ = add_rician_noise(decay(np.full(t2.shape, 1000.0), t2, TE_11), 20.0, rng)
    monkeypatch.setattr(fit_module, "MAX_ITER", 0)
    cut = fit(device, signal, TE_11, method=method, noise=NoiseModel(sigma=sigma))
    monkeypatch.undo()
    full = fit(device, signal, TE_11, method=method, noise=NoiseModel(sigma=sigma))
    assert cut.reason is not None and full.reason is not None
    not_converged = (cut.reason.numpy() & Failure.NOT_CONVERGED) > 0
    assert not (full.reason.numpy() & Failure.NOT_CONVERGED).any()
    if method.startswith("nlls"):
        assert not_converged.all(), cut.reason
    else:
        assert not not_converged.any()
        assert torch.equal(cut.reason, full.reason)


def test_arlo_cannot_report_a_rate_above_three_over_its_echo_spacing(device: str) -> None:
    """ARLO's Simpson integral of a decay gone by the second echo is dt/3 (y0 + 4 y1 + y2) ~
    dt/3 y0, so its R2* saturates at 3/dt: with 8 echoes over 3-40 ms (dt 5.3 ms) a T2* of
    0.2 ms comes out near T2* = dt/3 = 1.8 ms, in range and unflagged. With dt < 3 T2STAR_MIN
    (``TE_FLAGS``) the same voxel is flagged R2STAR_HIGH."""
    te = np.linspace(0.003, 0.040, 8)
    dt = te[1] - te[0]
    signal = decay(np.full(3, 1000.0), np.full(3, 2e-4), te).astype(np.float32)
    result = fit(device, signal, te, method="arlo")
    np.testing.assert_allclose(result.r2star.numpy(), 3.0 / dt, rtol=1e-3)
    assert result.reason is not None and not result.reason.any()


@pytest.mark.parametrize("method", METHODS)
def test_failed_is_reason_nonzero_on_a_phantom(device: str, method: str) -> None:
    """On a whole phantom with a noise-only background, a mask and a few broken voxels:
    ``failed == (reason != 0)`` exactly, 0 outside the mask, and the good object mostly 0."""
    ph = make_phantom((14, 12, 3), seed=7, with_phase=method == "complex")
    magnitude = ph.magnitude.copy()
    magnitude[2, 3, 1, 4] = np.nan
    magnitude[7, 6, 1, 2] = -3.0
    mask = np.ones(ph.mask.shape, dtype=bool)
    mask[0] = False
    signal: np.ndarray = magnitude
    if method == "complex":
        assert ph.phase is not None
        signal = np.where(np.isfinite(magnitude), magnitude * np.exp(1j * ph.phase), np.nan)
    result = fit(
        device, signal, ph.echo_times, method=method, mask=mask, noise=NoiseModel(sigma=ph.sigma)
    )
    assert result.reason is not None and result.reason.dtype == torch.uint8
    reason = result.reason.numpy()
    assert reason.shape == ph.mask.shape
    np.testing.assert_array_equal(result.failed.numpy(), reason != 0)
    assert not reason[~mask].any()
    assert reason[2, 3, 1] == Failure.BAD_INPUT
    if method != "complex":  # a negative real sample is a valid complex one
        assert reason[7, 6, 1] == Failure.BAD_INPUT
    assert (reason[ph.mask & mask] == 0).mean() > 0.9


@pytest.mark.parametrize("method", ["nlls", "nlls-gaussian", "wls"])
def test_chunk_workers_give_the_same_maps(method: str) -> None:
    """Chunks fitted at once in several threads: the same maps, bit for bit, as one after
    another, with a mask and a partial last chunk; torch's thread count is restored."""
    phantom = make_phantom((23, 19, 7), seed=4)
    sigma = phantom.sigma if method == "nlls" else None
    noise = NoiseModel(sigma)
    serial = fit_t2star(
        phantom.magnitude, phantom.echo_times, method=method, mask=phantom.mask, noise=noise,
        compute=Compute(chunk_size=97, workers=1),
    )  # fmt: skip
    threads = torch.get_num_threads()
    parallel = fit_t2star(
        phantom.magnitude, phantom.echo_times, method=method, mask=phantom.mask, noise=noise,
        compute=Compute(chunk_size=97, workers=3),
    )  # fmt: skip
    assert torch.get_num_threads() == threads
    for key, value in tensors(serial).items():
        assert torch.equal(value, tensors(parallel)[key]), key


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        fit_t2star(np.ones((2, 3)), [0.01, 0.02, 0.03], compute=Compute(workers=0))


def test_cpu_chunk_follows_the_voxel_count_only() -> None:
    """The default CPU chunk: a 12th of the voxels, between 16384 and 65536 voxels, from the
    voxel count alone (so the maps do not depend on the workers)."""
    assert fit_module.cpu_chunk(128 * 128 * 24) == 32768  # 12 chunks of the bench's set
    assert fit_module.cpu_chunk(12 * 20000 + 1) == 20001
    assert fit_module.cpu_chunk(1000) == fit_module.MIN_CPU_CHUNK == 16384
    assert fit_module.cpu_chunk(10**8) == fit_module.DEFAULT_CHUNK == 65536


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_default_chunks_are_cut_from_the_masked_voxels_and_give_the_same_maps(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a chunk size the CPU fit cuts the masked voxels into :func:`cpu_chunk` chunks,
    whatever the workers, and the maps are the same bytes as with that chunk size given."""
    from t2starmap.fit import dispatch

    phantom = make_phantom((80, 80, 40), seed=6)
    mask = np.ones(phantom.mask.shape, dtype=bool)
    mask[:, :, 36:] = False  # 230400 voxels: 12 chunks of 19200, not a 12th of the volume
    planned: list[int] = []
    plan = dispatch.plan

    def spy(compute: Compute, defaults: tuple[int, int]) -> dispatch.Plan:
        how = plan(compute, defaults)
        planned.append(how.chunk_size)
        return how

    monkeypatch.setattr(dispatch, "plan", spy)
    fit = lambda chunk: fit_t2star(  # noqa: E731
        phantom.magnitude, phantom.echo_times, mask=mask, noise=NoiseModel(phantom.sigma),
        compute=Compute(device="cpu", workers=workers, chunk_size=chunk),
    )  # fmt: skip
    default, given = fit(None), fit(fit_module.cpu_chunk(int(mask.sum())))
    assert planned[0] == fit_module.cpu_chunk(int(mask.sum())) == 19200 == planned[1]
    for key, value in tensors(default).items():
        assert torch.equal(value, tensors(given)[key]), key
