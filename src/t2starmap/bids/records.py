"""The records of a participant run: what it published for each echo set
(:class:`PublishedSet`, ``*_record.json`` beside the maps) and why a set failed
(:class:`SetFailure`, ``logs/failures/``); their one versioned JSON format, and the loaders the
group level and the pages read them with."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from t2starmap.bids.layout import SubjectSession

#: (method, noise model) -> the ``EstimationAlgorithm`` text of the map sidecars.
from t2starmap.bids.outputs import OutputSpec, output_path, set_name

# --- the record of a published echo set ------------------------------------------------------

#: Not a map: the record of one published echo set (see :class:`PublishedSet`), named like the
#: maps with the suffix ``record`` (listed in .bidsignore).
RECORD = OutputSpec("record", "record", None, None, "What t2starmap published for this echo set")
RECORD_VERSION = 1
#: Source metadata kept in the record for the pages (as pybids read it, inheritance honoured).
SOURCE_FIELDS = ("MagneticFieldStrength", "Manufacturer", "ManufacturerModelName")


@dataclass(frozen=True)
class Source:
    """One input echo: its path relative to the input dataset, its echo time (s) and the
    metadata the pages show."""

    path: str
    echo_time: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetStatistics:
    """Quartiles (q1, median, q3) of T2* (s) and R2* (1/s) and the median S0 over the
    signal-mask voxels whose fit did not fail; None when no voxel qualifies."""

    t2star: tuple[float, float, float] | None = None
    r2star: tuple[float, float, float] | None = None
    s0_median: float | None = None


@dataclass(frozen=True)
class PublishedSet(SubjectSession):
    """Everything later steps need of one published echo set, written once beside its maps
    (:func:`write_record`) and read back only by :func:`load_published`.

    ``files``: OUTPUTS key -> image path relative to the output folder (sidecars beside them,
    :func:`sidecar_path`). ``seconds``: time to read and fit the set (None when not known).
    """

    entities: Mapping[str, str]
    files: Mapping[str, str]
    sources: tuple[Source, ...]
    n_voxels: int
    failed_fraction: float
    noise_sigma: float | None
    noise_model: str
    noise_coils: float
    noise_method: str
    status_counts: Mapping[str, int]
    fit_method: str
    algorithm: str
    device: str
    statistics: SetStatistics
    seconds: float | None = None
    warnings: tuple[str, ...] = ()
    #: How many times the solver ran over the set (the fit, the corrected fit).
    solver_runs: int = 0
    #: Every noise-level estimate the choice was made from: method -> sigma.
    noise_candidates: Mapping[str, float] = field(default_factory=dict)
    #: Where the data cannot tell the noise level within its target (issue 27: magnitude
    #: only under ghosts that change from echo to echo, or a complex residual far above the
    #: air's), why; "" where none. The run warns and the sidecars say it too
    #: (``NoiseSigmaCaveat``).
    noise_caveat: str = ""
    #: Mask share whose decay does not follow the model: an estimate exists (its SE inflated),
    #: not a failure; in the set statistics.
    misfit_fraction: float = 0.0
    #: Seconds per step of reading and fitting the set (read, noise, phase, fit,
    #: correction, maps).
    steps: Mapping[str, float] = field(default_factory=dict)
    #: The phase or real/imaginary files read besides the magnitude echoes (paths relative
    #: to the input dataset): with ``sources``, every input that shaped an output.
    part_sources: tuple[str, ...] = ()
    #: The fit's fields of the map sidecars (method, noise, phase, correction, references):
    #: what the methods paragraph (``logs/CITATION.md``) is written from.
    methods: Mapping[str, Any] = field(default_factory=dict)
    #: Name -> version of the software that fitted the set (t2starmap, Python, PyTorch, ...).
    software: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The set's entities as in its file names, e.g. ``sub-01_ses-1_run-2``."""
        return set_name(self.entities)

    @property
    def echo_times(self) -> tuple[float, ...]:
        return tuple(s.echo_time for s in self.sources)

    def path(self, output_dir: Path, key: str) -> Path:
        """The image of OUTPUTS key ``key`` under ``output_dir``."""
        return Path(output_dir) / self.files[key]

    def to_json(self) -> str:
        return _versioned_json(asdict(self), "record_version", RECORD_VERSION)

    @classmethod
    def from_json(cls, text: str) -> PublishedSet:
        data = _unversioned(text, "record_version", RECORD_VERSION, "record")
        stats = data.pop("statistics")
        return cls(
            **{
                **data,
                "sources": tuple(Source(**s) for s in data["sources"]),
                "warnings": tuple(data["warnings"]),
                "part_sources": tuple(data.get("part_sources", ())),
                "statistics": SetStatistics(
                    t2star=_triple(stats["t2star"]),
                    r2star=_triple(stats["r2star"]),
                    s0_median=stats["s0_median"],
                ),
            }
        )


def _triple(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    return None if values is None else (float(values[0]), float(values[1]), float(values[2]))


def record_path(output_dir: Path, entities: Mapping[str, Any]) -> Path:
    return output_path(output_dir, entities, RECORD, ".json")


def load_published(
    output_dir: Path,
    participants: Iterable[str] | None = None,
    sessions: Iterable[str] | None = None,
) -> list[PublishedSet]:
    """The records of every echo set published under ``output_dir`` (by any run), optionally
    only those of some participants / sessions, sorted by name.

    Raises ValueError (naming the file) for a record that cannot be read.
    """
    pattern = f"*_{RECORD.suffix}.json"
    root = Path(output_dir)
    paths = sorted(root.glob(f"sub-*/anat/{pattern}")) + sorted(
        root.glob(f"sub-*/ses-*/anat/{pattern}")
    )
    return _load(paths, PublishedSet.from_json, "record", participants, sessions)


def record_paths(record: PublishedSet) -> list[str]:
    """Every file of a published set relative to the output folder: its images, their
    sidecars, the fit-status levels and the record itself (POSIX)."""
    paths = []
    for image in record.files.values():
        paths += [image, image.removesuffix(".nii.gz") + ".json"]
        if image.endswith("_dseg.nii.gz"):
            paths.append(image.removesuffix(".nii.gz") + ".tsv")
    paths.append(record_path(Path(), record.entities).as_posix())
    return paths


# --- the record of an echo set that failed ---------------------------------------------------

#: Where failure records live: one JSON per echo set that failed, named after the set
#: (``logs/failures/sub-01_ses-2_failure.json``); a later run that publishes the set removes it.
FAILURES_DIR = Path("logs") / "failures"
FAILURE_VERSION = 1


@dataclass(frozen=True)
class SetFailure(SubjectSession):
    """Why one echo set was not published: what the group table, the group page and the
    participant page list for it (:func:`load_failures`).

    ``reason``: the one-line error message (it names the file); ``exit_code``: the documented
    code of that error; ``error``: the error's class; ``first_echo``: the set's first echo
    relative to the input dataset; ``when``: UTC time, ISO 8601; ``traceback``: only for an
    unexpected error (a bug to report)."""

    entities: Mapping[str, str]
    reason: str
    exit_code: int
    error: str
    first_echo: str | None
    when: str
    traceback: str | None = None

    @property
    def name(self) -> str:
        return set_name(self.entities)

    def to_json(self) -> str:
        return _versioned_json(asdict(self), "failure_version", FAILURE_VERSION)

    @classmethod
    def from_json(cls, text: str) -> SetFailure:
        return cls(**_unversioned(text, "failure_version", FAILURE_VERSION, "failure record"))


def _versioned_json(data: dict[str, Any], key: str, version: int) -> str:
    """A record's JSON text, its format version under ``key``."""
    return json.dumps({**data, key: version}, indent=2, sort_keys=True) + "\n"


def _unversioned(text: str, key: str, version: int, what: str) -> dict[str, Any]:
    """A record's fields from its JSON text; ValueError when ``key`` is not ``version``."""
    data: dict[str, Any] = json.loads(text)
    if data.pop(key, None) != version:
        raise ValueError(f"{what} written by another version of t2starmap")
    return data


def failure_path(output_dir: Path, entities: Mapping[str, Any]) -> Path:
    return Path(output_dir) / FAILURES_DIR / f"{set_name(entities)}_failure.json"


def _selected(item: _NamedRecord, participants: set[str] | None, sessions: set[str] | None) -> bool:
    if participants is not None and item.subject not in participants:
        return False
    return sessions is None or item.session in sessions


def load_failures(
    output_dir: Path,
    participants: Iterable[str] | None = None,
    sessions: Iterable[str] | None = None,
) -> list[SetFailure]:
    """The failure records under ``output_dir``, optionally only of some participants /
    sessions, sorted by name. Raises ValueError (naming the file) for one that cannot be read."""
    paths = sorted((Path(output_dir) / FAILURES_DIR).glob("*_failure.json"))
    return _load(paths, SetFailure.from_json, "failure record", participants, sessions)


class _NamedRecord(Protocol):
    @property
    def subject(self) -> str: ...

    @property
    def session(self) -> str | None: ...

    @property
    def name(self) -> str: ...


#: A record of any kind: a published echo set, a published BOLD run
#: (:class:`t2starmap.bids.func_records.PublishedRun`), a failure.
_Named = TypeVar("_Named", bound=_NamedRecord)


def _load(
    paths: Iterable[Path],
    read: Callable[[str], _Named],
    what: str,
    participants: Iterable[str] | None,
    sessions: Iterable[str] | None,
) -> list[_Named]:
    """The records read from ``paths`` by ``read`` of the participants / sessions asked for
    (None: all), sorted by name; ValueError naming the file that cannot be read."""
    wanted_p = set(participants) if participants else None
    wanted_s = set(sessions) if sessions else None
    found = []
    for path in paths:
        try:
            item = read(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a readable t2starmap {what} ({err})") from err
        if _selected(item, wanted_p, wanted_s):
            found.append(item)
    return sorted(found, key=lambda item: item.name)
