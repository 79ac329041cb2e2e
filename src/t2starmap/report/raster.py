"""Figures as pixels: drawn once, laid over one another, encoded as PNG (Pillow).

Pure functions of Figures and arrays; no file I/O.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

#: Dots per inch of every figure: a montage 11 in wide is 1100 px, sharp at laptop width.
DPI = 100
#: The pixels a transparent layer covers: (row indices, column indices), their colours
#: (n, 3) and alphas (n, 1), uint16.
Layer = tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]


def draw_rgba(fig: Figure) -> np.ndarray:
    """``fig`` drawn at :data:`DPI`: (height, width, 4) uint8, straight (not premultiplied)
    alpha, a copy of the canvas' buffer."""
    fig.set_dpi(DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba())


def encode_png(rgba: np.ndarray, compress_level: int | None = None) -> bytes:
    """PNG bytes of (height, width, 4) uint8 pixels: RGB when every pixel is opaque, at zlib
    level ``compress_level`` (0-9; None: Pillow's default)."""
    opaque = bool((rgba[..., 3] == 255).all())
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]) if opaque else rgba)
    buffer = io.BytesIO()
    options = {} if compress_level is None else {"compress_level": compress_level}
    image.save(buffer, format="png", **options)
    return buffer.getvalue()


def covered_pixels(rgba: np.ndarray) -> Layer:
    """The :data:`Layer` of (height, width, 4) uint8 pixels: those not fully transparent."""
    rows, columns = np.nonzero(rgba[..., 3])
    covered = rgba[rows, columns].astype(np.uint16)
    return (rows, columns), covered[:, :3], covered[:, 3:]


def lay_over(rgba: np.ndarray, layer: Layer) -> None:
    """Lay ``layer`` over opaque (height, width, 4) uint8 pixels, in place, as Agg blends a
    straight-alpha source over them (to a level of rounding)."""
    (rows, columns), colour, alpha = layer
    under = rgba[rows, columns, :3].astype(np.uint16)
    rgba[rows, columns, :3] = (colour * alpha + under * (255 - alpha) + 127) // 255
