"""What machine a benchmark ran on: chip, OS, MLX device, library versions and the BLAS MLX calls.

On Linux the ``mlx[cpu]`` wheel links a bundled netlib *reference* BLAS, which is slow (a few
GFLOP/s in fp32). Preloading an optimised BLAS (OpenBLAS, MKL, BLIS) replaces its symbols, so
:func:`blas_library` looks at which shared object actually provides ``cblas_sgemm`` in this
process after a matmul ran.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REFERENCE_BLAS = "netlib reference BLAS"
OPENBLAS_HINT = (
    "MLX is calling the netlib reference BLAS (slow fp32 matmul). On Debian/Ubuntu: "
    "apt-get install -y libopenblas0-pthread, then run with "
    "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
)

_BLAS_LABELS = (
    ("openblas", "OpenBLAS"),
    ("mkl", "Intel MKL"),
    ("blis", "BLIS"),
    ("atlas", "ATLAS"),
    ("accelerate", "Accelerate"),
    ("veclib", "Accelerate"),
)


@dataclass(frozen=True)
class BlasInfo:
    """The BLAS that serves MLX's CPU matmuls.

    ``label`` is one of ``OpenBLAS``, ``Intel MKL``, ``BLIS``, ``ATLAS``, ``Accelerate``,
    ``netlib reference BLAS`` or ``unknown``; ``path`` is the shared object providing
    ``cblas_sgemm`` (empty when not found); ``preloaded`` is true when it was resolved from the
    global symbol scope, i.e. put there by ``LD_PRELOAD`` or loaded ``RTLD_GLOBAL`` ahead of MLX
    (:mod:`rxt_mlx.blas`), rather than the library the wheel links.
    """

    label: str
    path: str
    preloaded: bool
    ld_preload: str

    @property
    def is_reference(self) -> bool:
        return self.label == REFERENCE_BLAS


def classify_blas_path(path: str) -> str:
    """Name the BLAS implementation a shared-object path belongs to."""
    lowered = path.lower()
    for needle, label in _BLAS_LABELS:
        if needle in lowered:
            return label
    if os.path.basename(lowered).startswith(("libblas", "libcblas")):
        # A plain libblas that is none of the above: the wheel's bundled copy or Debian's netlib one.
        return REFERENCE_BLAS
    return "unknown"


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _library_of(address: int | None) -> str:
    """Path of the shared object containing ``address`` (dladdr), or ''."""
    if not address:
        return ""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except (AttributeError, OSError):
        return ""
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return ""
    return os.path.realpath(info.dli_fname.decode())


def _symbol_library(library: str | None, symbol: str) -> str:
    """Object providing ``symbol`` as the dynamic linker finds it from ``library``'s scope.

    ``library=None`` searches the global scope (executable, ``LD_PRELOAD``, ``RTLD_GLOBAL``
    libraries); a path searches that already-loaded library and its dependencies.
    """
    try:
        handle = ctypes.CDLL(library, mode=os.RTLD_NOLOAD | os.RTLD_LAZY) if library else ctypes.CDLL(None)
        return _library_of(ctypes.cast(getattr(handle, symbol), ctypes.c_void_p).value)
    except (AttributeError, OSError):
        return ""


def _libmlx_path() -> str | None:
    import mlx.core as mx

    package = Path(mx.__file__).parent
    candidates = sorted(package.glob("lib/libmlx.*")) + sorted(package.glob("libmlx.*"))
    return str(candidates[0]) if candidates else None


def _mapped_blas_paths() -> list[str]:
    """BLAS-looking shared objects mapped into this process, in first-mapped order."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    paths: list[str] = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        path = parts[5]
        name = os.path.basename(path).lower()
        if re.search(r"blas|mkl|blis|atlas", name) and path not in paths:
            paths.append(path)
    return paths


def _run_matmul() -> None:
    import mlx.core as mx

    with mx.stream(mx.cpu):
        a = mx.ones((64, 64), dtype=mx.float32)
        mx.eval(a @ a)


def blas_library() -> BlasInfo:
    """Detect which BLAS MLX's CPU backend calls in this process (after running one matmul).

    Linux: a ``cblas_sgemm`` found in the global scope (``LD_PRELOAD``, ``RTLD_GLOBAL``) wins
    over the libraries ``libmlx`` was linked against, exactly as the dynamic linker resolves it;
    otherwise it is the one among libmlx's dependencies, and failing that the first BLAS-like
    object in ``/proc/self/maps`` (numpy's and torch's private copies excluded). macOS: MLX
    links Accelerate.
    """
    preload = os.environ.get("LD_PRELOAD", "")
    if sys.platform == "darwin":
        return BlasInfo("Accelerate", "/System/Library/Frameworks/Accelerate.framework", False, preload)
    _run_matmul()
    global_path = _symbol_library(None, "cblas_sgemm")
    if global_path:
        return BlasInfo(classify_blas_path(global_path), global_path, True, preload)
    libmlx = _libmlx_path()
    linked = _symbol_library(libmlx, "cblas_sgemm") if libmlx else ""
    if linked:
        return BlasInfo(classify_blas_path(linked), linked, False, preload)
    # Last resort: the first BLAS-like object mapped that is not numpy's or torch's private copy.
    mapped = [path for path in _mapped_blas_paths() if not re.search(r"numpy|scipy|torch", path)]
    if not mapped:
        return BlasInfo("unknown", "", False, preload)
    return BlasInfo(classify_blas_path(mapped[0]), mapped[0], False, preload)


def blas_hint(info: BlasInfo) -> str | None:
    """Advice to print when MLX runs on the slow reference BLAS, else None."""
    return OPENBLAS_HINT if info.is_reference else None


def _cpu_model() -> str:
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Everything needed to read a benchmark's numbers: chip, OS, device, versions and BLAS."""
    import mlx.core as mx

    blas = blas_library()
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "mlx": _version("mlx"),
        "mlx_lm": _version("mlx-lm"),
        "torch": _version("torch"),
        "mlx_device": str(mx.default_device()),
        "blas": asdict(blas),
        "blas_hint": blas_hint(blas),
    }
