"""The HTML report opened in headless Chromium: it renders, and the page logs nothing to its console."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports import ReportPaths

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)
# Chromium logs every console message of the page as "...:CONSOLE:<line>] ..." (or CONSOLE(<line>)).
_CONSOLE = re.compile(r":CONSOLE[:(]")


def _screenshot(page: Path, png: Path, profile: Path) -> str:
    """Render ``page`` to ``png``; returns Chromium's log."""
    assert CHROMIUM is not None
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={png}",
            "--window-size=1280,4000",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_the_console_check_sees_a_page_that_logs(tmp_path: Path) -> None:
    page = tmp_path / "noisy.html"
    page.write_text(
        "<!DOCTYPE html><html><body><script>console.error('boom')</script></body></html>"
    )
    log = _screenshot(page, tmp_path / "noisy.png", tmp_path / "profile")
    assert _CONSOLE.search(log), log[-2000:]


def test_the_report_renders_in_chromium_without_console_errors(
    written: ReportPaths, tmp_path: Path
) -> None:
    png = tmp_path / "report.png"
    log = _screenshot(written.html, png, tmp_path / "profile")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 50_000  # a page with charts, not a blank one
    assert not _CONSOLE.search(log), [ln for ln in log.splitlines() if _CONSOLE.search(ln)]
