"""fp32 matmul GFLOP/s of MLX's CPU backend with the wheel's BLAS and with a preloaded OpenBLAS.

Usage: python benchmarks/blas_check.py [--openblas PATH] [--sizes 256 512 1024] [--json OUT]

Each configuration runs in its own process (the BLAS is chosen when the process loads
libmlx): once as installed (``RXT_MLX_BLAS=reference``, no ``LD_PRELOAD``) and once with
``LD_PRELOAD=PATH``. Prints GFLOP/s per size, the detected BLAS and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def measure(sizes: list[int], seconds: float = 1.0) -> dict:
    """GFLOP/s of ``a @ b`` (n x n, fp32) per size, and the BLAS detected in this process."""
    import mlx.core as mx

    from rxt_mlx.bench.machine import blas_library

    results = {}
    for n in sizes:
        a = mx.random.normal((n, n))
        b = mx.random.normal((n, n))
        mx.eval(a @ b)
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < seconds:
            mx.eval(a @ b)
            runs += 1
        elapsed = (time.perf_counter() - start) / runs
        results[str(n)] = 2 * n**3 / elapsed / 1e9
    blas = blas_library()
    return {"gflops": results, "blas": blas.label, "blas_path": blas.path}


def run_configuration(sizes: list[int], preload: str | None) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    environment["RXT_MLX_BLAS"] = "reference"
    if preload:
        environment["LD_PRELOAD"] = preload
    command = [sys.executable, __file__, "--measure", "--sizes", *map(str, sizes)]
    output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openblas", default=DEFAULT_OPENBLAS, help=f"library to preload (default {DEFAULT_OPENBLAS})")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.sizes)))
        return 0
    if not Path(args.openblas).exists():
        parser.error(f"{args.openblas} not found: apt-get install -y libopenblas0-pthread, or pass --openblas PATH")
    wheel = run_configuration(args.sizes, None)
    preloaded = run_configuration(args.sizes, args.openblas)
    speedup = {n: preloaded["gflops"][n] / wheel["gflops"][n] for n in wheel["gflops"]}
    print(f"{'n':>6}  {wheel['blas'] + ' GFLOP/s':>28}  {preloaded['blas'] + ' GFLOP/s':>18}  speed-up")
    for n in wheel["gflops"]:
        print(f"{n:>6}  {wheel['gflops'][n]:>28.1f}  {preloaded['gflops'][n]:>18.1f}  {speedup[n]:>7.1f}x")
    print(f"as installed: {wheel['blas_path']}\npreloaded:    {preloaded['blas_path']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"as_installed": wheel, "preloaded": preloaded, "speedup": speedup, "openblas": args.openblas}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
