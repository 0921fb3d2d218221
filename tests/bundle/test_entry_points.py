"""Every command-line entry point (a ``scripts`` or ``benchmarks`` module with a ``__main__`` block) prints
its help and exits 0 on ``--help``, without running anything.

One subprocess per entry point, as a user runs it: each imports torch (a few seconds), so this file stays
a single parametrised test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers.bundle import BUNDLE_ROOT

ENTRY_POINTS = sorted(
    ".".join(path.relative_to(BUNDLE_ROOT).with_suffix("").parts)
    for folder in ("scripts", "benchmarks")
    for path in (BUNDLE_ROOT / folder).rglob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_point_prints_help_and_exits_0(module):
    assert len(ENTRY_POINTS) >= 10, f"only {ENTRY_POINTS} found: did the entry points move?"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # a --help that runs the command instead (a benchmark takes minutes) fails here by the timeout
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    printed = result.stdout + result.stderr  # fire writes its help to stderr when not on a terminal
    assert result.returncode == 0, f"python -m {module} --help exited {result.returncode}: {printed[-2000:]}"
    assert "SYNOPSIS" in printed, f"python -m {module} --help printed no usage: {printed[-2000:]}"
