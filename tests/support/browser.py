"""Debian's Chromium driven by Playwright (never ``playwright install``), and where tests put screenshots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Screenshots of browser tests (gitignored); kept after the run so a reviewer can look.
ARTIFACTS = ROOT / "artifacts"


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium for the block, or a failure that says how to install it."""
    if not CHROMIUM.exists():
        raise AssertionError(f"{CHROMIUM} is missing: `make chromium` (or apt-get install chromium) installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
