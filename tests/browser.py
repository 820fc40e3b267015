"""Headless Chromium (Debian's `chromium`) for tests that look at a page as a browser renders it.

Each call is a fresh browser with its own empty profile: `dump_dom` prints the DOM after the page's scripts ran
for `budget_ms` of virtual time (timers run, network requests are waited for), `screenshot` writes a PNG.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def dump_dom(url: str, budget_ms: int = 3000, timeout: float = 60.0) -> str:
    done = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise AssertionError(f"chromium --dump-dom {url} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(url: str, path: Path, size: str = "1280,1400", budget_ms: int = 3000, timeout: float = 60.0) -> Path:
    done = _run([f"--virtual-time-budget={budget_ms}", f"--window-size={size}", f"--screenshot={path}", url],
                timeout)
    if done.returncode != 0 or not path.is_file():
        raise AssertionError(f"chromium --screenshot {url} failed ({done.returncode}): {done.stderr[-2000:]}")
    return path
