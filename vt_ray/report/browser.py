"""Open a report in headless Chromium (Debian's ``chromium``, installed by ``tools/setup_browser.sh``): the DOM
after the page's scripts ran, the console messages it printed, and a screenshot.

Chromium's own ``--dump-dom`` / ``--screenshot`` modes are enough here (no driver library, no browser download):
console messages come from ``--enable-logging=stderr`` (lines tagged ``CONSOLE``), and script errors are also
counted by the page itself in a ``data-js-errors`` attribute of ``<html>``, so they show in the dumped DOM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
_CONSOLE = re.compile(r":CONSOLE[:(\]].*")


class BrowserMissing(RuntimeError):
    pass


@dataclass
class PageLoad:
    dom: str
    console: list[str]  # console messages and uncaught errors, as Chromium logged them


def find_chromium() -> str | None:
    override = os.environ.get("VT_RAY_CHROMIUM")
    for path in ((override,) if override else CHROMIUM_CANDIDATES):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def _run(page: Path, mode: list[str], timeout_s: float, query: str = "") -> subprocess.CompletedProcess[str]:
    chromium = find_chromium()
    if chromium is None:
        raise BrowserMissing("no Chromium found: run tools/setup_browser.sh (Debian: apt-get install chromium) "
                             "or set VT_RAY_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="vtray-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", *mode,
               Path(page).resolve().as_uri() + (f"?{query}" if query else "")]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def load_page(page: str | Path, query: str = "", timeout_s: float = 120.0) -> PageLoad:
    """The page's DOM once its scripts have run, and every console line Chromium logged. ``query`` is the
    address's query string (the report's viewer reads its filters from it)."""
    proc = _run(Path(page), ["--dump-dom"], timeout_s, query)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({proc.returncode}): {proc.stderr[-2000:]}")
    console = [m.group(0) for line in proc.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return PageLoad(proc.stdout, console)


def screenshot(page: str | Path, out: str | Path, width: int = 1280, height: int = 2400,
               timeout_s: float = 120.0) -> Path:
    """A PNG of the page's top ``height`` pixels at ``width`` wide."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = _run(Path(page), [f"--screenshot={out}", f"--window-size={width},{height}"], timeout_s)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium --screenshot failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return out
