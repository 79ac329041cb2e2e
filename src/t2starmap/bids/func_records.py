"""The record of a published multi-echo BOLD run (:class:`PublishedRun`,
``sub-<s>[/ses-<t>]/func/<run>_record.json`` beside its maps): what the participant page and
the group level read back of it. Its own versioned JSON format, apart from the MEGRE record
(:class:`t2starmap.bids.records.PublishedSet`), whose format is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from t2starmap.bids.func_outputs import func_folder
from t2starmap.bids.layout import SubjectSession, run_name
from t2starmap.bids.records import (
    SetStatistics,
    Source,
    _load,
    _triple,
    _unversioned,
    _versioned_json,
)
from t2starmap.fit.tsnr import TsnrSummary

RUN_RECORD_VERSION = 1
#: The record's suffix (``<run>_record.json``; ``*_record.json`` is in ``.bidsignore``).
RUN_RECORD_SUFFIX = "record"


@dataclass(frozen=True)
class PublishedRun(SubjectSession):
    """Everything later steps need of one published multi-echo BOLD run.

    ``files``: t2smap registry key (:data:`t2starmap.bids.func_outputs.FUNC_OUTPUTS`) ->
    image path relative to the output folder. ``mask_counts``: voxels per number of good
    echoes in the adaptive mask (``"0"`` .. ``"<n echoes>"``). ``n_voxels``: voxels fitted
    (adaptive mask >= 1). ``failed_fraction``/``misfit_fraction``: shares of those whose fit
    failed (a failure label of the fit-status map) / whose decay does not follow the model.
    ``statistics``: T2*/R2* quartiles and median S0 over the fitted voxels whose fit did not
    fail (misfit included, as for MEGRE sets). ``tsnr``: the combined series against the best
    single echo over the fitted voxels (None with one volume). ``preprocessed``: fMRIPrep's
    motion-corrected echoes (``desc-preproc``), not raw ones.
    """

    entities: Mapping[str, str]
    files: Mapping[str, str]
    sources: tuple[Source, ...]
    n_volumes: int
    repetition_time: float
    fit_type: str
    algorithm: str
    preprocessed: bool
    n_voxels: int
    mask_counts: Mapping[str, int]
    failed_fraction: float
    misfit_fraction: float
    status_counts: Mapping[str, int]
    statistics: SetStatistics
    tsnr: TsnrSummary | None
    seconds: float | None = None
    warnings: tuple[str, ...] = ()
    software: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``sub-01_ses-1_task-rest_run-1``: the run's entities as in its file names."""
        return run_name(self.entities)

    @property
    def echo_times(self) -> tuple[float, ...]:
        return tuple(s.echo_time for s in self.sources)

    @property
    def n_echoes(self) -> int:
        return len(self.sources)

    def path(self, output_dir: Path, key: str) -> Path:
        """The image of registry key ``key`` under ``output_dir``."""
        return Path(output_dir) / self.files[key]

    def to_json(self) -> str:
        return _versioned_json(asdict(self), "run_record_version", RUN_RECORD_VERSION)

    @classmethod
    def from_json(cls, text: str) -> PublishedRun:
        data = _unversioned(text, "run_record_version", RUN_RECORD_VERSION, "run record")
        stats, tsnr = data.pop("statistics"), data.pop("tsnr")
        return cls(
            **{
                **data,
                "sources": tuple(Source(**s) for s in data["sources"]),
                "warnings": tuple(data["warnings"]),
                "statistics": SetStatistics(
                    t2star=_triple(stats["t2star"]),
                    r2star=_triple(stats["r2star"]),
                    s0_median=stats["s0_median"],
                ),
                "tsnr": None if tsnr is None else _tsnr(tsnr),
            }
        )


def _tsnr(data: Mapping[str, Any]) -> TsnrSummary:
    return TsnrSummary(
        **{
            **data,
            **{
                k: tuple(data[k]) for k in ("echo_medians", "edges", "optcom_counts", "best_counts")
            },
        }
    )


def run_record_path(output_dir: Path, entities: Mapping[str, Any]) -> Path:
    """``OUT/sub-<s>[/ses-<t>]/func/<run>_record.json``."""
    name = f"{run_name(entities)}_{RUN_RECORD_SUFFIX}.json"
    return Path(output_dir) / func_folder(entities) / name


def load_published_runs(
    output_dir: Path,
    participants: Iterable[str] | None = None,
    sessions: Iterable[str] | None = None,
) -> list[PublishedRun]:
    """The records of every BOLD run published under ``output_dir``, optionally only those of
    some participants / sessions, sorted by name. ValueError naming a record that cannot be
    read."""
    pattern = f"*_{RUN_RECORD_SUFFIX}.json"
    root = Path(output_dir)
    paths = sorted(root.glob(f"sub-*/func/{pattern}")) + sorted(
        root.glob(f"sub-*/ses-*/func/{pattern}")
    )
    return _load(paths, PublishedRun.from_json, "run record", participants, sessions)


def run_record_files(record: PublishedRun) -> list[str]:
    """Every file of a published run relative to the output folder: its images, their
    sidecars, the fit-status levels and the record (POSIX)."""
    paths = []
    for image in record.files.values():
        if image.endswith(".nii.gz"):
            paths += [image, image.removesuffix(".nii.gz") + ".json"]
        else:
            paths.append(image)
    paths.append(run_record_path(Path(), record.entities).as_posix())
    return paths
