"""Every command-line entry point (a ``scripts`` or ``benchmarks`` module with a ``__main__`` block) prints
its help and exits 0 on ``--help``, without running anything.

Each module's ``__main__`` block runs in this process (``runpy``) with ``--help`` as its arguments, exactly the
code ``python -m <module> --help`` runs after Python starts; a process per module would only add a torch import.
"""

from __future__ import annotations

import runpy
import sys

import pytest
import torch

from helpers.bundle import BUNDLE_ROOT

ENTRY_POINTS = sorted(
    ".".join(path.relative_to(BUNDLE_ROOT).with_suffix("").parts)
    for folder in ("scripts", "benchmarks")
    for path in (BUNDLE_ROOT / folder).rglob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)


@pytest.mark.timeout(120)  # a --help that runs the command instead (a benchmark takes minutes) fails here
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_point_prints_help_and_exits_0(module, monkeypatch, capsys):
    assert len(ENTRY_POINTS) >= 10, f"only {ENTRY_POINTS} found: did the entry points move?"
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exited:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        torch.set_num_threads(threads)  # a benchmark's __main__ may set its own
    printed = "".join(capsys.readouterr())  # fire writes its help to stderr when not on a terminal
    assert exited.value.code in (0, None), f"python -m {module} --help exited {exited.value.code}: {printed[-2000:]}"
    assert "SYNOPSIS" in printed, f"python -m {module} --help printed no usage: {printed[-2000:]}"
