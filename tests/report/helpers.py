"""Helpers of the report tests: a synthetic output folder and self-containment checks.

(A module with a unique name rather than conftest.py, so test files can import it.)
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from t2starmap.bids import outputs as derivatives
from t2starmap.bids import records
from t2starmap.bids.atomic import write_json, write_text
from t2starmap.bids.conventions import sidecar_path
from t2starmap.bids.layout import Echo, build_echo_set
from t2starmap.bids.nifti import Geometry
from t2starmap.bids.nifti_write import save_map
from t2starmap.bids.records import PublishedSet, Source
from t2starmap.bids.summary import set_statistics
from t2starmap.sim.phantoms import EXAMPLE_ECHO_TIMES, make_phantom, truth_maps, write_megre

FIT_INFO = {
    "EstimationAlgorithm": "simulated truth",
    "FitMethod": "truth",
    "NoiseModel": "rician",
    "NoiseSigma": 16.5,
    "ComputeDevice": "none",
    "Warnings": ["from the sidecar"],
}


def synthetic_output(
    root: Path,
    *,
    shape: tuple[int, ...] = (20, 18, 5),
    subject: str = "01",
    session: str | None = None,
    run: str | None = None,
    failed_fraction: float = 0.05,
    skip: tuple[str, ...] = (),
) -> PublishedSet:
    """A seeded phantom written as raw MEGRE under ``root/bids`` and maps (its truth standing
    in for a fit, some voxels marked failed) under ``root/out``, with its record."""
    phantom = make_phantom(shape, EXAMPLE_ECHO_TIMES, snr=60.0, seed=3)
    extra = f"_run-{run}" if run else ""
    paths = write_megre(root / "bids", phantom, subject, session, extra_entities=extra)
    meta = {"MagneticFieldStrength": 7, "Manufacturer": "Acme", "ManufacturerModelName": "X1"}
    echoes = [
        Echo(p, te, {"EchoTime": te, **meta})
        for p, te in zip(paths, phantom.echo_times, strict=True)
    ]
    entities = {"subject": subject}
    if session:
        entities["session"] = session
    if run:
        entities["run"] = run
    echo_set = build_echo_set(entities, echoes)
    zooms = (2.0, 2.0, 2.5)[: len(shape)]
    geometry = Geometry(shape, np.diag([2.0, 2.0, 2.5, 1.0]), zooms, 1, 1)
    maps = truth_maps(phantom, failed_fraction=failed_fraction, seed=1)
    maps["status"] = np.where(maps["failed"], 3, 0).astype(np.uint8)  # "not converged"
    written = [s.key for s in derivatives.OUTPUTS if not s.optional and s.key not in skip]
    for spec in derivatives.OUTPUTS:
        if spec.key not in written:
            continue
        path = derivatives.output_path(root / "out", echo_set.entities, spec, ".nii.gz")
        save_map(path, maps[spec.key], geometry)
        sidecar = derivatives.map_sidecar(spec, echo_set, (root / "bids").resolve(), FIT_INFO)
        write_json(sidecar_path(path), sidecar)
    good = maps["signal"] & ~maps["failed"]
    record = PublishedSet(
        entities=echo_set.entities,
        files=derivatives.output_files(echo_set.entities, written),
        sources=tuple(
            Source(derivatives.bids_path(root / "bids", e.path), e.echo_time, meta)
            for e in echo_set.echoes
        ),
        n_voxels=int(maps["signal"].sum()),
        failed_fraction=float(maps["failed"].sum() / maps["signal"].sum()),
        noise_sigma=phantom.sigma,
        noise_model="rician",
        noise_coils=1.0,
        noise_method="background-quantiles",
        status_counts={
            "good": int(maps["signal"].sum() - maps["failed"].sum()),
            "not_converged": int(maps["failed"].sum()),
        },
        fit_method="truth",
        algorithm="simulated truth",
        device="none",
        statistics=set_statistics(maps["t2star"], maps["r2star"], maps["s0"], good),
        seconds=0.5,
        warnings=("only <2> echoes & a warning",),
    )
    write_text(records.record_path(root / "out", record.entities), record.to_json())
    return record


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.resources: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values.get("src", ""))
        if tag == "script":
            self.scripts += 1
        if tag == "a" and "href" in values:
            self.links.append(values["href"])
        for attribute in ("src", "srcset", "data", "poster", "action"):
            if attribute in values:
                self.resources.append((tag, attribute, values[attribute]))
        if tag == "link" and "href" in values:
            self.resources.append((tag, "href", values["href"]))


def parse(text: str) -> _Collector:
    collector = _Collector()
    collector.feed(text)
    return collector


def assert_self_contained(text: str) -> _Collector:
    """Every image a data URI, no resource fetched from anywhere (CSS included), no script;
    plain <a href> links may point anywhere (they are not fetched)."""
    found = parse(text)
    assert found.images, "a report without figures"
    assert all(src.startswith("data:image/png;base64,") for src in found.images)
    for tag, attribute, value in found.resources:
        assert value.startswith("data:"), f"<{tag} {attribute}={value[:60]!r}> loads something"
    assert found.scripts == 0
    assert not re.search(r"url\(|@import|@font-face", text), "CSS that fetches"
    return found
