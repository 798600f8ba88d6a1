"""Peak memory of converting and loading RxT at its real sizes (issue 13, bounded-memory conversion).

For each model (``rxt-beta``, ``rxt-beta-micro``, ``rxt-alpha-mini``; see make_checkpoints.py):
write its bf16 rxlm checkpoint if it is not there yet, convert it with ``rxt-convert`` to bf16
and to 4-bit, and load each converted folder with ``rxt_mlx.load``, every step in a process of
its own. The peak resident memory of that process (GNU time's maximum RSS, which counts every
page it touched, file-mapped ones included) is compared with what it reads: the checkpoint for
a conversion (goal: at most 1.5x), the model folder for a load (goal: at most 1.2x). A process
that only imports the same modules gives the fixed cost of Python, MLX and torch, which
dominates the small models.

Every step runs under the big-memory lock (``flock /tmp/rxt-bigmem.lock``, shared with the
other memory-heavy jobs of this machine), so no two of them overlap.

Run from the repository root:

    .venv/bin/python benchmarks/real_size/memory.py [MODEL ...] [--work /tmp/rxt-real-size]

Checkpoints and converted folders stay in ``--work`` (``<model>-bf16``, ``mlx/<model>-bf16``,
``mlx/<model>-4bit``) for later measurements; the table goes to
``benchmarks/results/real-size/memory.md`` and ``memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "real-size"
LOCK = "/tmp/rxt-bigmem.lock"
MODELS = ("rxt-beta", "rxt-beta-micro", "rxt-alpha-mini")
GOALS = {"convert": 1.5, "load": 1.2}
GOAL_MODEL = "rxt-beta"
"""Issue 13's goals are for the RxT-Beta checkpoint; on small models the process's fixed cost dominates."""
BIN = Path(sys.executable).parent


def measure(command: list[str]) -> dict:
    """Run ``command`` under the big-memory lock; its peak RSS (bytes), wall seconds and stdout."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        result = subprocess.run(
            ["flock", LOCK, "/usr/bin/time", "-o", timing.name, "-f", "%M %e", *command],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        kib, seconds = timing.read().split("\n")[-2].split()
    return {"peak_rss_bytes": int(kib) * 1024, "seconds": float(seconds), "stdout": result.stdout}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def weight_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("*.safetensors"))


def child(mode: str, folder: str | None) -> None:
    """What a measured process does: load a folder (``load``) or only import the loader (``imports``)."""
    from rxt_mlx.blas import preload_optimised_blas

    preload_optimised_blas()
    import rxt_mlx
    import rxt_mlx.model
    import rxt_mlx.tokenizer  # noqa: F401 - what rxt_mlx.load imports, for the baseline

    if mode == "load":
        import time

        import mlx.core as mx

        start = time.perf_counter()
        model, _ = rxt_mlx.load(folder)
        seconds = time.perf_counter() - start
        print(json.dumps({"load_seconds": seconds, "mlx_active_bytes": mx.get_active_memory()}))


def run(models: list[str], work: Path) -> list[dict]:
    python = str(BIN / "python")
    records = []
    imports = {
        "convert": measure([str(BIN / "rxt-convert"), "--help"]),
        "load": measure([python, __file__, "--child", "imports"]),
    }
    for step, measured in imports.items():
        records.append(
            {
                "model": "-",
                "step": f"{step} imports only",
                **{key: measured[key] for key in ("peak_rss_bytes", "seconds")},
            }
        )
        print(f"{step} imports only: {measured['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    for model in models:
        checkpoint = work / f"{model}-bf16"
        if not (checkpoint / "config.json").is_file():
            made = measure([python, str(HERE / "make_checkpoints.py"), model, "--out", str(work)])
            records.append(
                {
                    "model": model,
                    "step": "write bf16 checkpoint",
                    "output_bytes": folder_bytes(checkpoint),
                    **{key: made[key] for key in ("peak_rss_bytes", "seconds")},
                }
            )
        for name, flags in (("bf16", []), ("4bit", ["-q"])):
            output = work / "mlx" / f"{model}-{name}"
            converted = measure(
                [str(BIN / "rxt-convert"), str(checkpoint), str(output), "--overwrite", "--no-progress", *flags]
            )
            records.append(
                {
                    "model": model,
                    "step": f"convert bf16 -> {name}",
                    "input_bytes": folder_bytes(checkpoint),
                    "input_files": len(weight_files(checkpoint)),
                    "output_bytes": folder_bytes(output),
                    "output_files": weight_files(output),
                    **{key: converted[key] for key in ("peak_rss_bytes", "seconds")},
                }
            )
            loaded = measure([python, __file__, "--child", "load", str(output)])
            records.append(
                {
                    "model": model,
                    "step": f"load {name}",
                    "input_bytes": folder_bytes(output),
                    "input_files": len(weight_files(output)),
                    **{key: loaded[key] for key in ("peak_rss_bytes", "seconds")},
                    **json.loads(loaded["stdout"].strip().splitlines()[-1]),
                }
            )
            for record in records[-2:]:
                print(_line(record), flush=True)
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Add each step's ratios to what it read and, for RxT-Beta (issue 13's goals), the verdict."""
    imports = {record["step"].split()[0]: record["peak_rss_bytes"] for record in records if record["model"] == "-"}
    for record in records:
        if "input_bytes" not in record:
            continue
        kind = record["step"].split()[0]
        record["ratio"] = record["peak_rss_bytes"] / record["input_bytes"]
        record["ratio_above_imports"] = (record["peak_rss_bytes"] - imports[kind]) / record["input_bytes"]
        if record["model"] == GOAL_MODEL:
            record["goal"] = GOALS[kind]
            record["meets_goal"] = record["ratio"] <= record["goal"]
    return records


def _line(record: dict) -> str:
    ratio = record["peak_rss_bytes"] / record["input_bytes"]
    return (
        f"{record['model']:>15} {record['step']:<22} reads {record['input_bytes'] / 1e9:6.2f} GB, "
        f"peak RSS {record['peak_rss_bytes'] / 1e9:6.2f} GB = {ratio:.2f}x, {record['seconds']:.0f} s"
    )


def table(records: list[dict]) -> str:
    gb = 1e9
    lines = [
        "| model | step | reads (GB) | files | peak RSS (GB) | peak / read | above imports / read | goal | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for record in records:
        if "input_bytes" not in record:
            continue
        verdict = f"≤ {record['goal']}x: {'met' if record['meets_goal'] else 'missed'}" if "goal" in record else "-"
        lines.append(
            f"| {record['model']} | {record['step']} | {record['input_bytes'] / gb:.2f} | {record['input_files']} | "
            f"{record['peak_rss_bytes'] / gb:.2f} | {record['ratio']:.2f}x | {record['ratio_above_imports']:.2f}x | "
            f"{verdict} | {record['seconds']:.0f} |"
        )
    extra = [
        f"| {record['model']} | {record['step']} | {record['peak_rss_bytes'] / gb:.2f} | {record['seconds']:.0f} |"
        for record in records
        if "input_bytes" not in record
    ]
    lines += ["", "| model | other process | peak RSS (GB) | time (s) |", "|---|---|---:|---:|", *extra]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rxt-real-size"), help="checkpoints and conversions")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    parser.add_argument("--child", nargs="+", metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1] if len(args.child) > 1 else None)
        return 0
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected any of {', '.join(MODELS)}")
    records = summarize(run(args.models or list(MODELS), args.work))
    command = " ".join(["python benchmarks/real_size/memory.py", *args.models])
    write_results(records, args.out, command)
    print(table(records))
    return 0


def write_results(records: list[dict], out: Path, command: str) -> None:
    """``memory.md`` (the tables) and ``memory.json`` (every record) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {platform.system()}, {subprocess.getoutput('nproc')} cores"
    header = (
        "# Peak memory of rxt-convert and rxt_mlx.load at real sizes\n\n"
        f"Machine: {machine}. Command: `{command}`. Sizes in GB (10^9 bytes); peak RSS is GNU time's "
        "maximum resident set of the step's own process, under `flock /tmp/rxt-bigmem.lock`. "
        '"above imports" subtracts the peak of a process that only imports the same modules '
        "(rxt-convert: torch and MLX; load: MLX), listed in the second table. The goals (issue 13) "
        f"are for {GOAL_MODEL}: at most {GOALS['convert']}x the checkpoint for a conversion, "
        f"{GOALS['load']}x the folder for a load; on the small models the process's fixed cost "
        "dominates the ratio.\n\n"
    )
    (out / "memory.md").write_text(header + table(records) + "\n")
    (out / "memory.json").write_text(
        json.dumps({"machine": machine, "command": command, "results": records}, indent=2) + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
