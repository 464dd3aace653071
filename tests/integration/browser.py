"""Headless Chromium with the network off, for the tests of the pages a person opens.

Debian's `chromium` (`.ci/run` installs it when missing), driven by Playwright's Python API (its
own browser downloads are never used: `executable_path` points at the system's). Every request a
page makes that is not a local file is refused and recorded, the browser context is set offline,
and Chromium itself is given a dead proxy and a resolver that resolves nothing, so a page that
still needs the internet shows up as a recorded request and an empty chart, never as a silent
download.

    with chromium() as browser:
        seen = open_offline(browser, Path("reports/run/index.html"))
        assert not seen.external, seen.external

Run as a script it writes full-page screenshots of the three pages of a project to
`reports/screenshots/` (what the README shows):

    python tests/integration/browser.py            # from the project root, after dvc repro
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path(os.environ.get("SIMCSE_OPS_CHROMIUM", "/usr/bin/chromium"))
OFFLINE_ARGS = [
    "--no-sandbox",                                   # CI runs as root
    "--proxy-server=127.0.0.1:9",                     # nothing listens on the discard port
    "--host-resolver-rules=MAP * ~NOTFOUND",          # and no name resolves
]
VIEWPORT = {"width": 1366, "height": 900}             # a laptop screen


@dataclass
class Seen:
    """One page as the browser showed it: the live page, what it tried to fetch from the
    network (refused), and the script errors it raised."""

    page: object
    external: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def chromium():
    """A headless Chromium browser (Playwright `Browser`), closed on exit."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise AssertionError(
            f"{CHROMIUM} not found: the page tests need Debian's Chromium "
            "(apt-get install chromium; .ci/run installs it), or set SIMCSE_OPS_CHROMIUM")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=OFFLINE_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_offline(browser, path: Path, settle_ms: int = 500) -> Seen:
    """Open the local file `path` in a fresh offline context and wait until it has loaded and
    its scripts have settled (vega-embed renders asynchronously)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise AssertionError(f"{path}: no such page")
    context = browser.new_context(viewport=VIEWPORT, offline=True)
    page = context.new_page()
    seen = Seen(page)

    def route(r) -> None:
        url = r.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")):
            r.continue_()
        else:
            seen.external.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(settle_ms)
    return seen


def svg_marks(page, selector: str = "svg") -> list[int]:
    """For each `<svg>` matching `selector`, the number of drawn marks in it (paths, rects,
    lines, circles and texts with a non-empty geometry): 0 means an empty chart."""
    return page.evaluate(
        """(sel) => Array.from(document.querySelectorAll(sel)).map(svg =>
              Array.from(svg.querySelectorAll('path, rect, line, circle, text'))
                   .filter(e => { const b = e.getBBox(); return b.width > 0 || b.height > 0; })
                   .length)""",
        selector,
    )


def is_blank(png: bytes) -> bool:
    """True when a screenshot holds a single colour (nothing drawn)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    return all(lo == hi for lo, hi in img.getextrema())


def _save_small(png: bytes, target: Path) -> None:
    """Save a screenshot with a 256-colour palette (a page is text and flat colours: a fraction of
    the size, nothing visible lost)."""
    import io

    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(target, optimize=True)


PAGES = {
    "dvc_plots": "dvc_plots/index.html",
    "data_docs": "reports/data_docs/index.html",
    "run_report": "reports/run/index.html",
}


def screenshot_pages(root: Path, out: Path) -> list[Path]:
    """Full-page screenshots of the project's three pages (those that exist) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with chromium() as browser:
        for name, rel in PAGES.items():
            if not (root / rel).is_file():
                print(f"skipped {rel}: not built", file=sys.stderr)
                continue
            seen = open_offline(browser, root / rel, settle_ms=1500)
            if seen.external:
                print(f"{rel}: refused network requests: {seen.external}", file=sys.stderr)
            target = out / f"{name}.png"
            png = seen.page.screenshot(full_page=True)
            _save_small(png, target)
            seen.page.context.close()
            written.append(target)
    return written


if __name__ == "__main__":
    root = Path.cwd()
    for p in screenshot_pages(root, root / "reports" / "screenshots"):
        print(p.relative_to(root))
