"""The package layout's promises: the inference core imports neither the converter nor a BLAS."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    """stdout of ``code`` in a fresh interpreter (this one has imported everything already)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_library_imports_no_converter_and_loads_no_blas():
    """Importing the core and its bench tools pulls in no rxt_convert, and leaves the BLAS choice to
    the program (the rxt-* entry points load one)."""
    modules = "rxt_mlx.session, rxt_mlx.model, rxt_mlx.bench.latency, rxt_mlx.bench.evaluate, rxt_mlx.blas"
    printed = _run(f"import sys, {modules}; print('rxt_convert' in sys.modules, rxt_mlx.blas.preloaded)")
    assert printed == "False None"


def test_bench_finds_the_reference_through_its_entry_point():
    from rxt_convert.bench_reference import ReferenceRunner

    from rxt_mlx.bench.systems import plugin_system

    assert plugin_system("reference") is ReferenceRunner
    with pytest.raises(SystemExit, match="no 'nonexistent' system is installed"):
        plugin_system("nonexistent")
