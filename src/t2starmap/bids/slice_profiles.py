"""A slice profile as users and sidecars spell it: ``rect``, ``gaussian[:W]``, ``sinc:N`` or a
TSV table (position in slice thicknesses, amplitude), read into a
:class:`~t2starmap.b0.profiles.SliceProfile`. The one place a profile table file is read or
written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from t2starmap.b0.profiles import SliceProfile, check_table, check_tbw, check_width

__all__ = ["format_profile_table", "parse_slice_profile", "read_profile_table"]


def _number(text: str, spec: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"slice profile {spec!r}: {what} {text.strip()!r} is not a number"
        ) from None
    if not value > 0:
        raise ValueError(f"slice profile {spec!r}: the {what} must be > 0")
    return value


def parse_slice_profile(spec: str, *, source: str = "option") -> SliceProfile:
    """A :class:`SliceProfile` from its ``--slice-profile`` spelling: ``rect``, ``gaussian``
    (FWHM = slice thickness), ``gaussian:W`` (FWHM W slice thicknesses), ``sinc:N`` (N the
    time-bandwidth product) or the path of a ``.tsv`` file (see
    :func:`read_profile_table`). Kinds are case-insensitive. Raises ValueError with a one-line
    message naming what is wrong (and, for a file, the file and line)."""
    text = str(spec).strip()
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind == "rect" or (kind == "gaussian" and not arg.strip()):
        if arg.strip():
            raise ValueError(
                f"slice profile {text!r}: rect takes no parameter (its width is the slice "
                "thickness)"
            )
        return SliceProfile(kind, source=source)
    if kind == "gaussian":
        width = _number(arg, text, "FWHM (slice thicknesses)")
        return SliceProfile("gaussian", check_width(width), source=source)
    if kind == "sinc":
        if not arg.strip():
            raise ValueError(
                f"slice profile {text!r} needs the pulse's time-bandwidth product, e.g. sinc:2.7"
            )
        tbw = _number(arg, text, "time-bandwidth product")
        return SliceProfile("sinc", check_tbw(tbw), source=source)
    if text.lower().endswith(".tsv"):
        positions, amplitudes = read_profile_table(text)
        return SliceProfile(
            "table",
            source=source,
            positions=tuple(float(v) for v in positions),
            amplitudes=tuple(float(v) for v in amplitudes),
            origin=text,
        )
    raise ValueError(
        f"unknown slice profile {text!r}: expected rect, gaussian[:<FWHM>], sinc:<time-bandwidth "
        "product> or a .tsv file (position in slice thicknesses, amplitude)"
    )


def read_profile_table(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(positions, amplitudes) of a profile TSV: two tab- or space-separated columns, position
    in slice thicknesses (strictly increasing) and amplitude (signed; its scale does not
    matter). Blank lines and lines starting with ``#`` are skipped; a first line that is not
    numeric is a header. At least 3 rows, positive area. The one function here that reads a
    file. Raises ValueError naming the file and line."""
    name = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"slice profile file {name}: cannot be read ({exc})") from None
    rows: list[tuple[float, float]] = []
    header_allowed = True
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise ValueError(
                f"slice profile file {name} line {number}: expected 2 columns (position, "
                f"amplitude), got {len(fields)}"
            )
        try:
            row = (float(fields[0]), float(fields[1]))
        except ValueError:
            if header_allowed:
                header_allowed = False
                continue
            raise ValueError(
                f"slice profile file {name} line {number}: {line.strip()!r} is not two numbers"
            ) from None
        header_allowed = False
        if not (math.isfinite(row[0]) and math.isfinite(row[1])):
            raise ValueError(f"slice profile file {name} line {number}: not finite")
        if rows and row[0] <= rows[-1][0]:
            raise ValueError(
                f"slice profile file {name} line {number}: position {row[0]:g} does not "
                f"increase (previous {rows[-1][0]:g})"
            )
        rows.append(row)
    if len(rows) < 3:
        raise ValueError(f"slice profile file {name}: {len(rows)} rows, at least 3 needed")
    table = np.asarray(rows, dtype=np.float64)
    check_table(table[:, 0], table[:, 1], f"slice profile file {name}")
    return table[:, 0], table[:, 1]


def format_profile_table(positions: np.ndarray, amplitudes: np.ndarray) -> str:
    """The text of a profile TSV that :func:`read_profile_table` reads back: a header line,
    then one ``position<TAB>amplitude`` row per point (17 significant digits: exact)."""
    x = np.asarray(positions, dtype=np.float64).reshape(-1)
    p = np.asarray(amplitudes, dtype=np.float64).reshape(-1)
    check_table(x, p, "format_profile_table")
    rows = "".join(f"{a!r}\t{b!r}\n" for a, b in zip(x.tolist(), p.tolist(), strict=True))
    return "position\tamplitude\n" + rows
