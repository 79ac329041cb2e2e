"""Where the noise is not uniform (a noise map: parallel imaging), the fits see echoes of
uniform noise: each voxel's echoes divided by its gain sigma_map / sigma. R2* and T2* do not
change with a voxel's scale; S0, its SE and the RMSE are multiplied back afterwards."""

from __future__ import annotations

from typing import Any

import numpy as np

from t2starmap.noise.result import NoiseEstimate

#: The maps in image units: multiplied back by the gain (:func:`to_image_units`).
IMAGE_UNITS = ("s0", "s0_se", "rmse")


def noise_gain(noise: NoiseEstimate) -> np.ndarray | None:
    """sigma_map / sigma (float32, the image's shape) where the noise is not uniform; None
    where one sigma holds."""
    if noise.sigma_map is None or noise.sigma is None:
        return None
    return np.asarray(noise.sigma_map / noise.sigma, dtype=np.float32)


def scaled_echoes(echoes: np.ndarray | None, gain: np.ndarray | None) -> Any:
    """``echoes`` (..., E) divided by ``gain`` (...) voxel by voxel (float32, or complex as
    they are); as they are without a gain."""
    if echoes is None or gain is None:
        return echoes
    if echoes.dtype.kind == "c":
        return echoes / gain[..., None]
    return (echoes / gain[..., None]).astype(np.float32)


def to_image_units(maps: dict[str, np.ndarray], gain: np.ndarray | None) -> None:
    """The maps of :data:`IMAGE_UNITS` multiplied back by ``gain``, in place."""
    if gain is None:
        return
    for key in IMAGE_UNITS:
        if key in maps:
            maps[key] = (maps[key] * gain).astype(np.float32)
