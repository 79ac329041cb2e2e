"""Regenerate docs/report-sub-01.png: run the demo, render sub-01.html in headless Chromium.

    .venv/bin/python docs/make_report_png.py        (needs `chromium` on PATH and Pillow)

The screenshot is cropped to the page, scaled to 960 px and reduced to a 192-colour palette
so the file stays small.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from t2starmap.cli.run import main as t2starmap

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT, OUT_WIDTH = 1280, 3000, 960


def render() -> Path:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        bids = str(HERE.parent / "bids_example")
        for level in ("participant", "group"):
            if t2starmap([bids, str(out), level, "--skip-bids-validation", "-q"]) != 0:
                raise SystemExit(f"the {level} level failed")
        shot = Path(tmp) / "shot.png"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={Path(tmp) / 'prof'}",
             f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
             (out / "sub-01.html").as_uri()],
            check=True, capture_output=True,
        )  # fmt: skip
        image = Image.open(shot).convert("RGB")
    pixels = np.asarray(image).astype(int)
    content = np.flatnonzero(np.abs(pixels - pixels[-1, 0]).sum(-1).max(axis=1) > 10)
    image = image.crop((0, 0, WIDTH, min(HEIGHT, int(content[-1]) + 40)))
    image = image.resize((OUT_WIDTH, round(image.height * OUT_WIDTH / WIDTH)), Image.LANCZOS)
    target = HERE / "report-sub-01.png"
    image.quantize(colors=192, dither=Image.Dither.NONE).save(target, optimize=True)
    return target


if __name__ == "__main__":
    path = render()
    print(f"{path} ({path.stat().st_size // 1024} KB)")
