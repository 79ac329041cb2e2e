"""The report pages in a real browser: headless Chromium renders each one.

Checked per page: the screenshot is a real picture, the console stays silent, every <img>
decoded, and the page asked the network for nothing. Chromium's own background traffic
(update checks, network time; initiator "not an origin" in its net log) is told apart from
the page's requests and blocked anyway by a resolver rule that maps every host to nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)"
)

FLAGS = (
    "--headless",
    "--no-sandbox",  # root in containers/CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-pings",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
WIDTH = 1280  # a laptop screen
NARROW = 1024  # the narrowest laptop screen: the page must not scroll sideways there
PAGES = ("sub-01.html", "sub-02_ses-1.html", "sub-02_ses-2.html", "group_report.html")
#: Injected into a copy of the page: once all has loaded, records how many images decoded and
#: by how many pixels the page is wider than the window.
PROBE = (
    "<script>window.addEventListener('load', function () {"
    " var all = Array.from(document.images), root = document.documentElement;"
    " var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; });"
    " root.setAttribute('data-images', ok.length + '/' + all.length);"
    " root.setAttribute('data-overflow', String(root.scrollWidth - root.clientWidth));"
    "});</script>"
)


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked for (not file: or data:), from Chromium's net log."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] != start_job or "url" not in params:
            continue
        if params.get("initiator") == "not an origin":  # the browser's own
            continue
        if not params["url"].startswith(("file:", "data:")):
            urls.append(params["url"])
    return urls


def load_and_probe(page: Path, tmp: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """(the probe's attributes, page requests, console lines) for a copy of ``page`` with the
    probe script, in a window :data:`NARROW` wide (the copy lives in ``tmp``; the page is
    self-contained)."""
    probe = tmp / page.name
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    net_log = tmp / "net.json"
    done = chromium(
        tmp,
        "--enable-logging=stderr",
        "--v=0",
        f"--log-net-log={net_log}",
        "--virtual-time-budget=5000",
        f"--window-size={NARROW},800",
        "--dump-dom",
        probe.as_uri(),
    )
    root = re.search(r"<html[^>]*>", done.stdout)
    probed = dict(re.findall(r'data-(\w+)="([^"]*)"', root.group(0))) if root else {}
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return probed, page_requests(net_log), console


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_in_chromium(demo_output: Path, tmp_path: Path, name: str) -> None:
    page = demo_output / name
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},2000", page.as_uri())
    image = imread(shot)
    assert image.shape[:2] == (2000, WIDTH)
    rgb = (image[..., :3].reshape(-1, 3) * 255).astype(np.uint32)
    packed = rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]
    assert len(np.unique(packed)) > 200, "the screenshot is (nearly) blank"
    background = (packed == packed[0]).mean()
    assert background < 0.9, "the page body is (nearly) empty"

    probed, requests, console = load_and_probe(page, tmp_path)
    n = page.read_text(encoding="utf-8").count("<img ")
    assert probed.get("images") == f"{n}/{n}", "not every <img> decoded"
    assert probed.get("overflow") == "0", f"wider than a {NARROW} px window"
    assert requests == [], "the page asked the network for something"
    assert console == [], "console messages (errors) while loading the page"


def test_the_checks_catch_a_leaky_page(tmp_path: Path) -> None:
    """Negative control: a page with an external image, stylesheet and fetch, and too wide,
    is caught."""
    leaky = tmp_path / "src" / "leaky.html"
    leaky.parent.mkdir()
    leaky.write_text(
        '<!DOCTYPE html><html><head><link rel="stylesheet" href="https://fonts.invalid/a.css">'
        '</head><body><img src="http://images.invalid/x.png">'
        '<div style="width: 3000px">wide</div>'
        '<script>fetch("https://api.invalid/y")</script></body></html>'
    )
    probed, requests, console = load_and_probe(leaky, tmp_path)
    assert probed["images"] == "0/1"
    assert int(probed["overflow"]) > 0
    assert sorted(requests) == [
        "http://images.invalid/x.png",
        "https://api.invalid/y",
        "https://fonts.invalid/a.css",
    ]
    assert console, "the failed fetch should reach the console"


@pytest.fixture(scope="module")
def real_pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GE coronal kidney slab (real/imaginary parts: complex fit) and the Siemens Prisma
    3-echo phantom (magnitude and phase), converted from the shared DICOM and run with
    --fit-method auto. (The Siemens XA30 2-echo set once served here; it is a field map,
    which the converter writes to fmap/ and the participant level does not fit.)"""
    from t2starmap.cli.run import main
    from tests.support.files import SHARED_DATA

    root = tmp_path_factory.mktemp("real")
    for folder, label in (
        ("ge-mr750-kidney-megre", "ge"),
        ("siemens-prisma-megre-phantom", "prisma"),
    ):
        source = SHARED_DATA / "dicom" / folder
        assert (
            main(["convert", str(source), str(root / "bids"), "--participant-label", label, "-q"])
            == 0
        )
    argv = [str(root / "bids"), str(root / "out"), "participant", "--fit-method", "auto"]
    assert main([*argv, "--skip-bids-validation", "-q"]) == 0
    return root / "out"


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "plane"),
    # GE's slab runs anterior to posterior: the first (posterior) tile is the file's k = 4
    [("sub-ge.html", "Coronal slices k = 4, 3, 2, 1, 0 of the file"), ("sub-prisma.html", "Axial")],
)
def test_real_data_pages_render_without_sideways_scrolling(
    real_pages: Path, tmp_path: Path, name: str, plane: str
) -> None:
    page = real_pages / name
    text = page.read_text(encoding="utf-8")
    assert plane in text
    probed, requests, console = load_and_probe(page, tmp_path)
    n = text.count("<img ")
    assert probed.get("images") == f"{n}/{n}"
    assert probed.get("overflow") == "0", f"wider than a {NARROW} px window"
    assert requests == [] and console == []
