"""Use an optimised BLAS for MLX's CPU backend on Linux when one is installed.

The Linux ``mlx[cpu]`` wheel links the netlib reference BLAS (``libblas.so.3``), which runs
fp32 matmuls some 30x slower than OpenBLAS. Loading Debian's OpenBLAS build of
``libblas.so.3`` into the global symbol scope *before* MLX is imported makes MLX's
``cblas_*`` calls resolve to it, the same effect as ``LD_PRELOAD`` without a wrapper
script. Set ``RXT_MLX_BLAS=reference`` to opt out, or ``RXT_MLX_BLAS=/path/libblas.so`` to
choose the library.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

preloaded: str | None = None
"""Path of the BLAS library this module loaded, or None."""


def preload_optimised_blas() -> str | None:
    """Load an optimised BLAS ahead of MLX on Linux; return its path, or None if nothing was loaded."""
    global preloaded
    choice = os.environ.get("RXT_MLX_BLAS", "")
    if preloaded or not sys.platform.startswith("linux") or choice == "reference" or "mlx.core" in sys.modules:
        return preloaded
    for path in (choice,) if choice else OPENBLAS_CANDIDATES:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            preloaded = path
            break
    return preloaded
