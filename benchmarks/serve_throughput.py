"""Aggregate answer tokens/s of rxt-serve with 1, 2, 4 and 8 concurrent streams.

Usage: python benchmarks/serve_throughput.py [--model DIR] [--streams 1,2,4,8] [--turns 4]
       [--max-tokens 32] [--max-batch 8] [--repeats 2] [--out results/serve/demo.json]

The README's figures: the demo with ``--turns 6 --repeats 3``; the 15M model of
``python benchmarks/make_bench_model.py DIR`` with ``--model DIR --turns 3 --max-tokens 64``.

Starts rxt-serve in a process of its own (a loopback port, a fresh data dir) and runs N
clients at once (asyncio, in this process), each posting ``--turns`` greedy turns to its own conversation through the
native API (each turn waits for the previous one's memory update, as a chat does). Aggregate
tokens/s is all answers' tokens over the wall time of the whole run: prefill, memory updates,
snapshots, commits and HTTP included. The best of ``--repeats`` runs is kept (the machine is
shared). ``--max-batch 1`` decodes one answer at a time, for comparison.

A second table times the decoder steps alone (rxt_mlx.batch.DecodeBatch with B rows, no server):
the ceiling that batching gives before the per-turn work (prefill, memory update, saving).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERIES = ["My name is Ann.", "I have a cat named Tom.", "What is my name?", "I live in Paris.", "What pet do I have?"]


async def run_streams(url: str, streams: int, turns: int, max_tokens: int) -> tuple[float, int]:
    """Seconds and answer tokens of ``streams`` clients posting ``turns`` turns each, at once."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        conversations = [(await http.post("/api/conversations", json={})).json()["id"] for _ in range(streams)]

        async def client(index: int) -> int:
            tokens = 0
            for turn in range(turns):
                body = {"query": QUERIES[(index + turn) % len(QUERIES)], "stream": False, "max_tokens": max_tokens}
                response = await http.post(f"/api/conversations/{conversations[index]}/turns", json=body)
                response.raise_for_status()
                tokens += response.json()["stats"]["tokens"]
            return tokens

        started = time.perf_counter()
        tokens = await asyncio.gather(*(client(index) for index in range(streams)))
        return time.perf_counter() - started, sum(tokens)


def start_server(model_dir: Path, data_dir: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """rxt-serve in a process of its own (the clients' work stays out of its threads)."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "rxt_app.serve", "--model", str(model_dir), "--data-dir", data_dir]
    command += ["--port", str(port), "--max-tokens", str(args.max_tokens), "--max-batch", str(args.max_batch)]
    process = subprocess.Popen([*command, "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1)
            return process, url
        except httpx.TransportError:
            if process.poll() is not None:
                raise SystemExit("rxt-serve did not start") from None
            time.sleep(0.2)


def decode_steps(model_dir: Path, counts: list[int], steps: int = 30, repeats: int = 5) -> list[dict]:
    """Tokens/s of ``steps`` decoder steps with B rows (each its own STM), for each B in ``counts``
    (the best of ``repeats``)."""
    import mlx.core as mx

    import rxt_mlx
    from rxt_mlx.batch import DecodeBatch

    model, tokenizer = rxt_mlx.load(model_dir)
    vocab = min(model.config.decoder.vocab_size, tokenizer.vocab_size)
    rows = []
    for count in counts:
        batch = DecodeBatch(model.decoder, vocab)
        for row in range(count):
            memory = model.decoder.project_memory(model.initial_stm(1, seed=row))
            batch.add(tokenizer.query_ids(QUERIES[row % len(QUERIES)]), memory)
        tokens = mx.zeros((count,), dtype=mx.uint32)
        for _ in range(3):  # traced and warm
            tokens = mx.argmax(batch.step(tokens), axis=-1)
        mx.eval(tokens)
        seconds = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(steps):
                tokens = mx.argmax(batch.step(tokens), axis=-1)
                tokens.tolist()
            seconds = min(seconds, time.perf_counter() - started)
        rows.append({"rows": count, "step_ms": 1000 * seconds / steps, "tokens_per_second": count * steps / seconds})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="MLX model folder (default: the bundled demo)")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from rxt_mlx.blas import preload_optimised_blas

    preload_optimised_blas()
    from rxt_app.command_line import demo_model_dir

    model_dir = args.model or demo_model_dir()
    counts = [int(count) for count in args.streams.split(",")]
    rows = []
    load_before = os.getloadavg()[0]  # the machine is shared: the ratios of one run are what compare
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(model_dir, data_dir, args)
        try:
            asyncio.run(run_streams(url, max(counts), 1, args.max_tokens))  # warm-up: batch shapes traced
            for streams in counts:
                best = None
                for _ in range(args.repeats):
                    seconds, tokens = asyncio.run(run_streams(url, streams, args.turns, args.max_tokens))
                    if best is None or tokens / seconds > best[1] / best[0]:
                        best = (seconds, tokens)
                rate = best[1] / best[0]
                rows.append({"streams": streams, "seconds": best[0], "tokens": best[1], "tokens_per_second": rate})
                print(f"{streams} streams: {best[1]} tokens in {best[0]:.2f} s = {rate:.0f} tok/s", flush=True)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    load_after = os.getloadavg()[0]
    single = rows[0]["tokens_per_second"]
    print(f"\nmodel {model_dir}; max batch {args.max_batch}; {args.turns} turns per stream")
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} CPUs")
    print("| streams | tokens | seconds | aggregate tok/s | x single stream |\n|---:|---:|---:|---:|---:|")
    for row in rows:
        rate, ratio = row["tokens_per_second"], row["tokens_per_second"] / single
        print(f"| {row['streams']} | {row['tokens']} | {row['seconds']:.2f} | {rate:.0f} | {ratio:.2f} |")
    steps = decode_steps(model_dir, counts, repeats=args.repeats * 2)
    print("\n| rows decoded together | step ms | decoder tok/s | x one row |\n|---:|---:|---:|---:|")
    for row in steps:
        ratio = row["tokens_per_second"] / steps[0]["tokens_per_second"]
        print(f"| {row['rows']} | {row['step_ms']:.1f} | {row['tokens_per_second']:.0f} | {ratio:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "model": model_dir.name,
            "max_batch": args.max_batch,
            "turns": args.turns,
            "max_tokens": args.max_tokens,
            "load_average": [load_before, load_after],
            "rows": rows,
            "decode_steps": steps,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
