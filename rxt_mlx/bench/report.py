"""Output of rxt-bench: the per-turn table, CSV, JSON, a PNG plot and a terminal-chart fallback."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SYSTEM_LABELS = {
    "rxt": "RxT (MLX)",
    "baseline": "stateless, full re-prefill",
    "baseline_cached": "stateless, KV cache kept",
    "reference": "RxT (PyTorch reference)",
}
SHORT_LABELS = {"rxt": "RxT", "baseline": "Base", "baseline_cached": "BaseKV", "reference": "Ref"}


@dataclass
class TurnRow:
    """One system's measurements for one turn (a row of the CSV)."""

    system: str
    turn: int
    prompt_tokens: int
    context_tokens: int
    answer_tokens: int
    ttft_seconds: float
    decode_seconds: float
    decode_tokens_per_second: float
    memory_update_seconds: float | None
    peak_memory_mb: float
    memory_source: str


def series(rows: Sequence[TurnRow], system: str, field: str) -> list[float]:
    """Per-turn values of ``field`` for ``system``, in turn order."""
    return [getattr(row, field) for row in sorted(rows, key=lambda row: row.turn) if row.system == system]


def systems_in(rows: Sequence[TurnRow]) -> list[str]:
    return [system for system in SYSTEM_LABELS if any(row.system == system for row in rows)]


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def format_table(rows: Sequence[TurnRow]) -> str:
    """A fixed-width table: one line per turn, TTFT (ms) and decode tok/s per system, RxT memory update."""
    systems = systems_in(rows)
    header = ["turn"]
    for system in systems:
        header += [f"{SHORT_LABELS[system]} TTFT ms", f"{SHORT_LABELS[system]} tok/s"]
    header += ["RxT mem-upd ms", "RxT peak MB", "BaseKV ctx"]
    by_key = {(row.system, row.turn): row for row in rows}
    lines = []
    for turn in sorted({row.turn for row in rows}):
        line = [str(turn)]
        for system in systems:
            row = by_key.get((system, turn))
            line += [_milliseconds(row and row.ttft_seconds), f"{row.decode_tokens_per_second:.1f}" if row else "-"]
        rxt = by_key.get(("rxt", turn))
        cached = by_key.get(("baseline_cached", turn)) or by_key.get(("baseline", turn))
        line += [
            _milliseconds(rxt and rxt.memory_update_seconds),
            f"{rxt.peak_memory_mb:.1f}" if rxt else "-",
            str(cached.context_tokens) if cached else "-",
        ]
        lines.append(line)
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    render = [
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *lines]
    ]
    render.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(render)


def write_csv(path: Path, rows: Sequence[TurnRow]) -> None:
    names = [field.name for field in fields(TurnRow)]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in asdict(row).items()})


def write_json(path: Path, report: dict, rows: Sequence[TurnRow]) -> None:
    document = {**report, "rows": [asdict(row) for row in rows]}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def terminal_chart(
    values_by_name: dict[str, Sequence[float]], *, title: str, width: int = 64, height: int = 14, log: bool = True
) -> str:
    """A text line chart of several series over the same x axis (turns), one marker letter per series.

    ``log`` puts the y axis on a log10 scale (latencies of the systems differ by orders of
    magnitude); non-positive values are skipped there.
    """
    markers = "ox+*#@%&"
    points = [value for values in values_by_name.values() for value in values if not log or value > 0]
    if not points:
        return f"{title}\n(no data)"

    def scale(value: float) -> float:
        return math.log10(value) if log else value

    low, high = scale(min(points)), scale(max(points))
    span = high - low or 1.0
    turns = max(len(values) for values in values_by_name.values())
    grid = [[" "] * width for _ in range(height)]
    for marker, values in zip(markers, values_by_name.values(), strict=False):
        for index, value in enumerate(values):
            if log and value <= 0:
                continue
            column = 0 if turns == 1 else round(index * (width - 1) / (turns - 1))
            row = height - 1 - round((scale(value) - low) / span * (height - 1))
            grid[row][column] = marker

    def label(level: float) -> str:
        value = 10**level if log else level
        return f"{value:10.4g}"

    lines = [title]
    for index, cells in enumerate(grid):
        level = high - index * span / (height - 1)
        axis = label(level) if index in (0, height // 2, height - 1) else " " * 10
        lines.append(f"{axis} |{''.join(cells)}")
    lines.append(" " * 10 + " +" + "-" * width)
    lines.append(" " * 12 + f"turn 1{' ' * max(1, width - 12 - len(str(turns)))}turn {turns}")
    legend = "  ".join(f"{marker} {name}" for marker, name in zip(markers, values_by_name, strict=False))
    lines.append(" " * 12 + legend)
    return "\n".join(lines)


def latency_chart_text(rows: Sequence[TurnRow]) -> str:
    """The terminal fallback for the PNG: TTFT per turn for every system, log scale."""
    ttft = {SYSTEM_LABELS[system]: series(rows, system, "ttft_seconds") for system in systems_in(rows)}
    return terminal_chart(ttft, title="time to first token per turn (seconds, log scale)")


def write_plot(path: Path, rows: Sequence[TurnRow], title: str) -> bool:
    """Save the per-turn latency plot as PNG; return False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = systems_in(rows)
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = (
        (axes[0][0], "ttft_seconds", "time to first token (ms)", 1000.0, True),
        (axes[0][1], "decode_tokens_per_second", "decode speed (tokens/s)", 1.0, False),
        (axes[1][1], "peak_memory_mb", "peak memory (MB)", 1.0, False),
    )
    for axis, field, label, factor, log in panels:
        for system in systems:
            values = series(rows, system, field)
            name = SYSTEM_LABELS[system]
            if field == "peak_memory_mb" and "rss" in series(rows, system, "memory_source"):
                name += " (process peak RSS)"
            axis.plot(range(1, len(values) + 1), [value * factor for value in values], marker=".", label=name)
        axis.set_xlabel("turn")
        axis.set_ylabel(label)
        if log:
            axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[1][1].legend(fontsize=8)
    updates = [value * 1000 for value in series(rows, "rxt", "memory_update_seconds") if value is not None]
    axes[1][0].plot(range(1, len(updates) + 1), updates, marker=".", color="tab:blue", label="RxT memory update")
    axes[1][0].set_xlabel("turn")
    axes[1][0].set_ylabel("RxT memory update (ms, after the answer)")
    axes[1][0].grid(True, alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
