"""Per-turn timings of a Session over many turns: TTFT must not grow with the turn number.

Run from the repository root:

    .venv/bin/python benchmarks/session_turns.py [--turns 20] [--model DIR]

Without ``--model`` a small random model (D=128, 4 layers, 64 STM slots) and a tiny byte-level
BPE tokenizer are built in a temporary folder. Every turn has the same query length and a
forced answer of ``--answer-tokens`` tokens, so the turns do the same work; a stateless model
would instead re-read the growing history and slow down turn after turn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rxt_mlx  # noqa: E402
from rxt_mlx.config import RxTConfig  # noqa: E402
from rxt_mlx.model import RxT, save_model  # noqa: E402
from rxt_mlx.sampling import forced_tokens_processor  # noqa: E402
from rxt_mlx.session import AnswerDone, MemoryUpdated, Session  # noqa: E402
from tests.tokenizer_factories import tokenizer_config, write_bpe_tokenizer  # noqa: E402


def random_model_folder(folder: Path, seed: int) -> Path:
    common = {"embed_dim": 128, "num_layers": 4, "att_heads": 8, "seq_len": 256, "stm_size": 64}
    transformer = {**common, "vocab_size": 300, "ff_dim": 384, "att_groups": 4, "att_query_groups": 4}
    config = RxTConfig.from_dict(
        {
            "decoder_config": transformer,
            "encoder_config": {**transformer, "skip_memory_cross_attention": True},
            "memory_attention_config": {**common, "att_groups": 4, "att_query_groups": 4},
            "tokenizer_config": tokenizer_config(),
            "memory_attention_variant": "self-interlayer",
        }
    )
    mx.random.seed(seed)
    model = RxT(config)
    mx.eval(model.parameters())
    save_model(model, folder)
    write_bpe_tokenizer(folder)
    return folder


def run(model_dir: Path, turns: int, answer_tokens: int) -> list[dict[str, float]]:
    model, tokenizer = rxt_mlx.load(model_dir)
    session = Session(model, tokenizer)
    answer = tokenizer.encode("The capital of France is Paris, and it is lovely in spring. ")
    answer = (answer * (answer_tokens // len(answer) + 1))[:answer_tokens]

    def forced() -> dict:
        return {"max_tokens": len(answer), "logits_processors": [forced_tokens_processor(answer)]}

    list(session.interact("Warm-up turn, not measured.", **forced()))
    rows = []
    for turn in range(1, turns + 1):
        row: dict[str, float] = {"turn": turn}
        for event in session.interact(f"Question number {turn:03d}: what did I say?", **forced()):
            if isinstance(event, AnswerDone):
                row.update(
                    tokens=event.tokens,
                    prompt_ms=1000 * event.prompt_seconds,
                    ttft_ms=1000 * event.ttft_seconds,
                    decode_tps=event.decode_tokens_per_second,
                )
            elif isinstance(event, MemoryUpdated):
                row["update_ms"] = 1000 * event.seconds
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, float]]) -> None:
    print(f"{'turn':>4} {'tokens':>6} {'prompt ms':>10} {'TTFT ms':>8} {'decode tok/s':>12} {'update ms':>10}")
    for row in rows:
        print(
            f"{row['turn']:>4} {row['tokens']:>6} {row['prompt_ms']:>10.1f} {row['ttft_ms']:>8.1f} "
            f"{row['decode_tps']:>12.1f} {row['update_ms']:>10.1f}"
        )
    if len(rows) >= 10:
        first = statistics.median(row["ttft_ms"] for row in rows[:5])
        last = statistics.median(row["ttft_ms"] for row in rows[-5:])
        print(f"median TTFT turns 1-5: {first:.1f} ms, last 5 turns: {last:.1f} ms (ratio {last / first:.2f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="MLX model folder (default: a small random model)")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model or random_model_folder(Path(folder), args.seed)
        print_table(run(model_dir, args.turns, args.answer_tokens))


if __name__ == "__main__":
    main()
