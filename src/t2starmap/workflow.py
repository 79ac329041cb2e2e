"""The only orchestrator: participant level (fit and write maps) and group level (summary).

Participant level runs in three phases so that bad input stops it before anything is written:
1. find the echo sets and check their metadata and headers;
2. fit each set and write its maps into a private staging folder (``--work-dir`` or the
   system temp folder);
3. publish: copy every staged file into the output atomically, then the settings log.
A failure in 1 or 2 leaves the output as it was (apart from the shared, identical
``dataset_description.json``/``.bidsignore``); the input dataset is only ever read.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2starmap import __version__, derivatives
from t2starmap.atomic import write_json, write_text, write_with
from t2starmap.errors import (
    BadDataError,
    InputMissingError,
    OutputError,
    UsageError,
    ValidationError,
)
from t2starmap.fit import (
    T2STAR_MAX,
    T2STAR_MIN,
    EchoSpacingError,
    FitResult,
    fit_t2star,
    resolve_device,
)
from t2starmap.layout import EchoSet, find_echo_sets
from t2starmap.nifti import Geometry, check_geometry, load_magnitude, read_map, save_map
from t2starmap.noise import estimate_noise, signal_mask
from t2starmap.report import write_group_report, write_participant_reports
from t2starmap.settings import Settings

log = logging.getLogger("t2starmap")

GROUP_TABLE = "group_T2starmap.tsv"


@dataclass
class SetOutcome:
    """What one echo set produced; handed to reports and logs."""

    echo_set: EchoSet
    files: list[Path] = field(default_factory=list)
    n_voxels: int = 0
    failed_fraction: float = 0.0
    noise_sigma: float | None = None
    noise_model: str = "gaussian"
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


# --- shared by both levels -------------------------------------------------------------------


def prepare_output(output_dir: Path) -> None:
    """Create the output folder (exit 73 when impossible) and its shared top-level files."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OutputError(
            f"{output_dir}: cannot create or write the output folder ({err})"
        ) from err


def write_shared_files(settings: Settings) -> None:
    out = settings.output_dir
    write_json(out / "dataset_description.json", derivatives.dataset_description(settings.bids_dir))
    write_text(out / ".bidsignore", "\n".join(derivatives.BIDSIGNORE) + "\n")


def write_settings_log(settings: Settings) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    who = "_".join(f"sub-{p}" for p in settings.participant_labels or ())[:80] or "all"
    path = settings.output_dir / "logs" / f"settings_{settings.analysis_level}_{who}_{stamp}.json"
    write_text(path, settings.to_json())
    return path


def validate_input(settings: Settings) -> None:
    from t2starmap.validate import validate_bids

    log.info(
        "validating %s with bids-validator (skip with --skip-bids-validation)", settings.bids_dir
    )
    try:
        report = validate_bids(settings.bids_dir)
    except (RuntimeError, OSError) as err:
        raise ValidationError(f"{settings.bids_dir}: could not run bids-validator ({err})") from err
    if not report.ok:
        shown = "; ".join(str(e) for e in report.errors[:3])
        more = f" (and {len(report.errors) - 3} more)" if len(report.errors) > 3 else ""
        raise ValidationError(
            f"{settings.bids_dir}: bids-validator found {len(report.errors)} error(s): "
            f"{shown}{more}"
        )


@contextmanager
def staging_folder(work_dir: Path | None) -> Iterator[Path]:
    try:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="t2starmap-", dir=work_dir))
    except OSError as err:
        raise OutputError(f"{work_dir}: cannot create a work folder ({err})") from err
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _progress(iterable: list[EchoSet]) -> Any:
    """A progress bar on a terminal, nothing extra otherwise (log lines say where we are)."""
    if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
        from tqdm import tqdm

        return tqdm(iterable, desc="echo sets", unit="set", file=sys.stderr)
    return iterable


# --- participant level -----------------------------------------------------------------------


def run_participant(settings: Settings) -> list[SetOutcome]:
    prepare_output(settings.output_dir)
    if settings.skip_validation:
        log.info("input validation skipped (--skip-bids-validation)")
    else:
        validate_input(settings)
    try:
        device = resolve_device(settings.device)
    except ValueError as err:
        raise UsageError(f"--device {settings.device}: {err}") from err
    torch.set_num_threads(settings.nprocs)

    echo_sets = find_echo_sets(
        settings.bids_dir,
        settings.participant_labels,
        settings.session_labels,
        settings.bids_filters,
    )
    geometries = [check_geometry(s) for s in echo_sets]
    _check_unique_outputs(echo_sets)
    log.info("%d echo set(s) to fit on %s with %s", len(echo_sets), device, settings.fit_method)

    outcomes = []
    with staging_folder(settings.work_dir) as stage:
        for echo_set, geometry in zip(_progress(echo_sets), geometries, strict=True):
            outcomes.append(_fit_echo_set(settings, echo_set, geometry, device, stage))
        write_shared_files(settings)
        for outcome in outcomes:
            for staged in outcome.files:
                target = settings.output_dir / staged.relative_to(stage)
                write_with(target, partial(shutil.copyfile, staged))
            outcome.files = [settings.output_dir / f.relative_to(stage) for f in outcome.files]
    write_settings_log(settings)
    for outcome in outcomes:
        log.info(
            "%s: %d voxels fitted, %.1f%% failed, %.2f s -> %s",
            outcome.echo_set.name,
            outcome.n_voxels,
            100 * outcome.failed_fraction,
            outcome.seconds,
            outcome.files[0].parent,
        )
    write_participant_reports(settings.output_dir, settings.bids_dir, outcomes)
    return outcomes


def _check_unique_outputs(echo_sets: list[EchoSet]) -> None:
    seen: dict[Path, EchoSet] = {}
    spec = derivatives.OUTPUTS[0]
    for echo_set in echo_sets:
        path = derivatives.output_path(Path("."), echo_set, spec, ".nii.gz")
        if path in seen:
            raise BadDataError(
                f"{echo_set.echoes[0].path}: echo sets {seen[path].name} and {echo_set.name} "
                f"differ only in {', '.join(derivatives.dropped_entities(echo_set))}, which "
                "derivative names cannot carry; select one with --bids-filter-file"
            )
        seen[path] = echo_set


def _fit_echo_set(
    settings: Settings, echo_set: EchoSet, geometry: Geometry, device: torch.device, stage: Path
) -> SetOutcome:
    started = time.perf_counter()
    outcome = SetOutcome(echo_set)
    magnitude = load_magnitude(echo_set, geometry)
    first = echo_set.echoes[0].path
    unusable = ~np.all(np.isfinite(magnitude), axis=-1) | np.any(magnitude < 0, axis=-1)
    if unusable.all() or not np.any(magnitude[~unusable] > 0):
        raise BadDataError(
            f"{first}: no usable signal in set {echo_set.name} (all voxels are "
            "zero, negative or not finite)"
        )
    if unusable.any():
        message = (
            f"{echo_set.name}: {int(unusable.sum())} voxel(s) with NaN/inf or negative "
            "samples are flagged as failed"
        )
        log.warning("%s", message)
        outcome.warnings.append(message)
        magnitude[unusable] = np.nan
    if len(echo_set.echoes) == 2:
        message = (
            f"{echo_set.name}: only 2 echoes: the fit is exact, so RMSE is 0 and no "
            "goodness of fit can be given"
        )
        log.warning("%s", message)
        outcome.warnings.append(message)

    if settings.noise_sigma is not None:
        sigma: float | None = settings.noise_sigma
        log.info("%s: noise sigma %.4g given on the command line", echo_set.name, sigma)
    else:
        estimate = estimate_noise(magnitude[..., 0])
        sigma = estimate.sigma
        if sigma is None:
            message = (
                f"{echo_set.name}: noise level could not be estimated from the "
                f"background ({estimate.reason}); falling back to the Gaussian fit"
            )
            log.warning("%s", message)
            outcome.warnings.append(message)
        else:
            log.info(
                "%s: noise sigma %.4g from %d background voxels",
                echo_set.name,
                sigma,
                estimate.n_background,
            )
    mask = signal_mask(magnitude, sigma)
    if not mask.any():
        raise BadDataError(f"{first}: no voxel of set {echo_set.name} rises above the noise")

    try:
        result = fit_t2star(
            magnitude,
            echo_set.echo_times,
            method=settings.fit_method,
            mask=mask,
            device=device,
            noise_sigma=sigma,
        )
    except EchoSpacingError as err:
        raise UsageError(f"{first}: --fit-method {settings.fit_method}: {err}") from err
    except ValueError as err:
        raise BadDataError(f"{first}: {err}") from err
    outcome.n_voxels = int(mask.sum())
    failed = result.failed.cpu().numpy() & mask
    outcome.failed_fraction = float(failed.sum() / max(outcome.n_voxels, 1))
    outcome.noise_sigma = result.noise_sigma
    outcome.noise_model = result.noise_model
    outcome.seconds = time.perf_counter() - started
    fit_info = _fit_info(result, settings, outcome)
    for spec in derivatives.OUTPUTS:
        data = _map_array(result, spec.key, mask, failed)
        image = derivatives.output_path(stage, echo_set, spec, ".nii.gz")
        save_map(image, data, geometry)
        sidecar = derivatives.output_path(stage, echo_set, spec, ".json")
        write_json(sidecar, derivatives.map_sidecar(spec, echo_set, settings.bids_dir, fit_info))
        outcome.files += [image, sidecar]
    return outcome


def _map_array(result: FitResult, key: str, mask: np.ndarray, failed: np.ndarray) -> np.ndarray:
    if key == "signal":
        return mask
    if key == "failed":
        return failed
    values: torch.Tensor = getattr(result, key)
    return np.where(mask, values.cpu().numpy(), 0.0).astype(np.float32)


_ALGORITHMS = {
    ("nlls", "rician"): "Noise-aware least squares: the squared magnitude fitted to its Rician "
    "expectation S0^2 exp(-2 TE R2*) + 2 sigma^2 by iteratively reweighted Levenberg-Marquardt "
    "from a weighted log-linear start",
    ("nlls", "gaussian"): "Levenberg-Marquardt least squares on (S0, R2*) from a weighted "
    "log-linear start (no noise level known, so no noise-floor correction)",
    ("nlls-gaussian", "gaussian"): "Levenberg-Marquardt least squares on (S0, R2*) from a "
    "weighted log-linear start",
    ("wls", "gaussian"): "Weighted (S^2) linear least squares on log signal",
    ("loglin", "gaussian"): "Ordinary linear least squares on log signal",
    ("arlo", "gaussian"): "Auto-regression on linear operations (ARLO, Pei et al. 2015)",
}


def _fit_info(result: FitResult, settings: Settings, outcome: SetOutcome) -> dict[str, Any]:
    info: dict[str, Any] = {
        "EstimationAlgorithm": _ALGORITHMS.get((result.method, result.noise_model), result.method),
        "FitMethod": result.method,
        "NoiseModel": result.noise_model,
        "NoiseSigma": result.noise_sigma,
        "NoiseSigmaSource": (
            "command line"
            if settings.noise_sigma is not None
            else "background"
            if result.noise_sigma is not None
            else "none"
        ),
        "ComputeDevice": result.device,
        "T2starRange": [T2STAR_MIN, T2STAR_MAX],
        "SoftwareName": "t2starmap",
        "SoftwareVersion": __version__,
    }
    if outcome.warnings:
        info["Warnings"] = list(outcome.warnings)
    return info


# --- group level -----------------------------------------------------------------------------

GROUP_COLUMNS = {
    "participant_id": "Participant (sub-<label>)",
    "session_id": "Session (ses-<label>), n/a without sessions",
    "echo_set": "Entities of the echo set, as in the map file names",
    "n_voxels": "Voxels in the signal mask",
    "failed_fraction": "Fraction of signal-mask voxels whose fit failed",
    "t2star_median": "Median T2* (s) over signal-mask voxels that did not fail",
    "t2star_q1": "25th percentile of T2* (s), same voxels",
    "t2star_q3": "75th percentile of T2* (s), same voxels",
    "t2star_iqr": "Interquartile range of T2* (s), same voxels",
    "r2star_median": "Median R2* (1/s), same voxels",
    "r2star_q1": "25th percentile of R2* (1/s)",
    "r2star_q3": "75th percentile of R2* (1/s)",
    "r2star_iqr": "Interquartile range of R2* (1/s)",
    "noise_sigma": "Noise SD used by the fit (input units), n/a when unknown",
    "snr": "Median S0 over the same voxels divided by noise_sigma, n/a when unknown",
}


def run_group(settings: Settings) -> Path:
    out = settings.output_dir
    maps = sorted(p for p in out.glob("sub-*/**/anat/*_T2starmap.nii.gz") if "_desc-" not in p.name)
    if settings.participant_labels:
        maps = [p for p in maps if p.name.split("_")[0][4:] in settings.participant_labels]
    if not maps:
        raise InputMissingError(
            f"{out}: no participant-level outputs (*_T2starmap.nii.gz) found; run the "
            "participant level first"
        )
    rows = []
    for t2_path in maps:
        stem = t2_path.name[: -len("_T2starmap.nii.gz")]

        def sibling(suffix: str, stem: str = stem, folder: Path = t2_path.parent) -> Path:
            return folder / f"{stem}_{suffix}"

        try:
            t2 = read_map(t2_path)
            r2 = read_map(sibling("R2starmap.nii.gz"))
            s0 = read_map(sibling("S0map.nii.gz"))
            mask = read_map(sibling("desc-signal_mask.nii.gz")) > 0
            failed = read_map(sibling("desc-failed_mask.nii.gz")) > 0
            sidecar = json.loads(t2_path.with_name(stem + "_T2starmap.json").read_text())
        except (OSError, ValueError) as err:
            raise BadDataError(
                f"{t2_path}: participant outputs incomplete or unreadable ({err})"
            ) from err
        rows.append(_group_row(stem, mask, failed, t2, r2, s0, sidecar.get("NoiseSigma")))
    prepare_output(out)
    write_shared_files(settings)
    table = out / GROUP_TABLE
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(GROUP_COLUMNS), delimiter="\t", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    write_text(table, buffer.getvalue())
    write_json(
        table.with_suffix(".json"), {k: {"Description": v} for k, v in GROUP_COLUMNS.items()}
    )
    write_group_report(out, table)
    write_settings_log(settings)
    log.info("group summary of %d echo set(s): %s", len(rows), table)
    return table


def _group_row(
    stem: str,
    mask: np.ndarray,
    failed: np.ndarray,
    t2: np.ndarray,
    r2: np.ndarray,
    s0: np.ndarray,
    sigma: Any,
) -> dict[str, Any]:
    entities = dict(part.split("-", 1) for part in stem.split("_") if "-" in part)
    good = mask & ~failed
    n_voxels = int(mask.sum())

    def stats(values: np.ndarray) -> tuple[str, str, str, str]:
        if values.size == 0:
            return ("n/a",) * 4
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        return f"{med:.6g}", f"{q1:.6g}", f"{q3:.6g}", f"{q3 - q1:.6g}"

    t2_stats, r2_stats = stats(t2[good]), stats(r2[good])
    has_sigma = isinstance(sigma, int | float) and sigma > 0
    snr = f"{np.median(s0[good]) / sigma:.4g}" if has_sigma and good.any() else "n/a"
    set_name = "_".join(p for p in stem.split("_") if not p.startswith(("sub-", "ses-")))
    return {
        "participant_id": f"sub-{entities['sub']}",
        "session_id": f"ses-{entities['ses']}" if "ses" in entities else "n/a",
        "echo_set": set_name or "n/a",
        "n_voxels": n_voxels,
        "failed_fraction": f"{(failed & mask).sum() / max(n_voxels, 1):.6g}",
        "t2star_median": t2_stats[0],
        "t2star_q1": t2_stats[1],
        "t2star_q3": t2_stats[2],
        "t2star_iqr": t2_stats[3],
        "r2star_median": r2_stats[0],
        "r2star_q1": r2_stats[1],
        "r2star_q3": r2_stats[2],
        "r2star_iqr": r2_stats[3],
        "noise_sigma": f"{sigma:.6g}" if has_sigma else "n/a",
        "snr": snr,
    }
