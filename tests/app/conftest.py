"""Fixtures of the app's tests: the system's headless Chromium."""

from __future__ import annotations

import os

import pytest

from helpers.app import CHROMIUM


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium of the system (the CI installs it; a missing browser fails, it does not skip)."""
    assert os.path.exists(CHROMIUM), (
        f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium chromium-driver (.ci/run does)."
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()
