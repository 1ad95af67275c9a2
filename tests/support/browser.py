"""Headless Chromium for the page tests: Debian's ``chromium`` driven by Playwright (no browser
download; ``scripts/test.sh`` installs the package).

``browser`` (a fixture in conftest) gives a fresh ``playwright.async_api.Browser`` per test, on the
test's event loop, so Wharf under pytest-aiohttp and the browser share one loop. Screenshots for
docs/ are taken with ``screenshot(page, name)``: written to docs/screenshots/NAME.png only when
``WHARF_SCREENSHOTS=1`` (a person compares them; tests never do).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import AsyncIterator

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page, name: str, *, full_page: bool = True) -> Path | None:
    """The page as docs/screenshots/NAME.png, when WHARF_SCREENSHOTS=1; else nothing."""
    if os.environ.get("WHARF_SCREENSHOTS") != "1":
        return None
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path
