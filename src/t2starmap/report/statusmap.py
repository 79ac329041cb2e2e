"""The fit-status map drawn on the page: one colour per label, with its legend (issue 27).

Failures (no usable estimate) in magenta and its neighbours, the decay that does not follow the
model in orange (an estimate exists), good fits grey, fits the field-gradient correction left
out light blue, outside the mask black: the same colours as the montages' overlays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from t2starmap.fit.status import LEVELS, Failure, Level, level_named
from t2starmap.report.figures import (
    AXIAL,
    FAILED_RGBA,
    MISFIT_RGBA,
    MONTAGE_COMPRESSION,
    mosaic,
    to_png,
)
from t2starmap.report.planes import View

#: The colour of each fit-status label, by name.
STATUS_RGB: dict[str, tuple[float, float, float]] = {
    "not_fitted": (0.0, 0.0, 0.0),
    "good": (0.55, 0.55, 0.55),
    "unusable_input": (0.55, 0.0, 0.55),
    "r2star_at_lower_bound": FAILED_RGBA[:3],
    "r2star_at_upper_bound": (1.0, 0.45, 0.85),
    "nonpositive_s0": (0.75, 0.2, 0.45),
    "phase_not_following_model": (0.85, 0.0, 0.35),
    "not_converged": (0.6, 0.3, 1.0),
    "decay_not_following_model": MISFIT_RGBA[:3],
    "not_gradient_corrected": (0.55, 0.8, 1.0),
    "refitted": (0.75, 0.75, 0.45),
}


def status_png(
    status: np.ndarray,
    slices: Sequence[int],
    counts: dict[str, int],
    view: View = AXIAL,
    tile_in: float = 1.75,
) -> bytes:
    """Slices of the canonical fit-status map (uint8 label indices) as ``view`` cuts them, each
    label in its :data:`STATUS_RGB` colour, and a legend of the labels in ``counts`` (name ->
    voxels in the mask) that occur, with their counts."""
    colours = {level.index: STATUS_RGB[level.name] for level in LEVELS}
    shown = [lv for lv in LEVELS if counts.get(lv.name, 0) and lv.index]
    handles = [Patch(color=STATUS_RGB[lv.name], label=_legend_text(lv, counts)) for lv in shown]
    return label_montage_png(status, slices, colours, handles, 3.2, view, tile_in)


def label_montage_png(
    labels: np.ndarray,
    slices: Sequence[int],
    colours: Mapping[int, tuple[float, float, float]],
    handles: Sequence[Patch],
    legend_in: float,
    view: View = AXIAL,
    tile_in: float = 1.75,
) -> bytes:
    """Slices of a canonical label image (integer labels) as ``view`` cuts them, each label in
    its colour (``colours``: label -> RGB; others black), with ``handles`` as the legend in a
    ``legend_in``-inch strip on the right; PNG at :data:`MONTAGE_COMPRESSION`."""
    tiles = mosaic(labels.astype(np.float32), slices, view=view)
    rgb = np.zeros((*tiles.shape, 3), dtype=np.float32)
    for label, colour in colours.items():
        rgb[tiles == label] = colour
    columns = max(1, min(6, len(slices)))
    image_w = tile_in * columns
    height_px, width_px = tiles.shape
    height_in = max(1.6, image_w * height_px * view.pixel_aspect / width_px)
    fig = Figure(figsize=(image_w + legend_in, height_in), facecolor="black")
    ax = fig.add_axes((0.0, 0.0, image_w / (image_w + legend_in), 1.0))
    ax.set_axis_off()
    ax.imshow(rgb, interpolation="nearest", aspect=view.pixel_aspect)
    if handles:
        fig.legend(
            handles=handles, loc="center right", fontsize=7, frameon=False, labelcolor="white"
        )
    return to_png(fig, MONTAGE_COMPRESSION)


def _legend_text(level: Level, counts: dict[str, int]) -> str:
    kind = "failed" if level.failure else ("misfit" if level.bit == Failure.MISFIT else "fit")
    return f"{level.name} ({kind}): {counts.get(level.name, 0)}"


MISFIT_NAME = "decay_not_following_model"
_MISFIT_INDEX = level_named(MISFIT_NAME).index


def misfit_mask(maps: Mapping[str, np.ndarray], good: np.ndarray) -> np.ndarray:
    """Voxels whose fit stands but whose decay does not follow the model (from the fit-status
    map; none without one)."""
    if "status" not in maps:
        return np.zeros_like(good)
    return good & (maps["status"] == _MISFIT_INDEX)


def overlay_note(n_failed: int, n_misfit: int) -> str:
    """The montages' caption note: failed voxels in magenta, misfit ones tinted orange."""
    failed = f"{n_failed} failed voxel(s) in magenta" if n_failed else "no voxel failed"
    misfit = (
        f"{n_misfit} voxel(s) whose decay does not follow the model tinted orange (their "
        "estimate is kept and shows through the tint; the fit-status map's legend counts them "
        "as misfit, not failed)"
        if n_misfit
        else "no misfit"
    )
    return f"{failed[0].upper()}{failed[1:]}; {misfit}."
