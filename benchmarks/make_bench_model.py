"""Write the dense RxT model folder rxt-bench uses when the bundled demo model is absent.

Usage: python benchmarks/make_bench_model.py OUT [--embed-dim 256] [--layers 6] [--stm-size 128]

Random weights (timing does not depend on them), D=256, 6 stateful layers, SQA self- and
cross-attention with 8 query / 4 kv heads, a dense SwiGLU FFN, and the tiny test BPE tokenizer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.factories import tiny_config, write_model_folder  # noqa: E402
from tests.tokenizer_factories import write_bpe_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--stm-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    transformer = {
        "vocab_size": args.vocab_size,
        "ff_dim": 3 * args.embed_dim,
        "att_groups": 4,
        "att_query_groups": 8,
    }
    config = tiny_config(
        embed_dim=args.embed_dim,
        num_layers=args.layers,
        att_heads=8,
        seq_len=512,
        stm_size=args.stm_size,
        decoder=transformer,
        encoder=transformer,
        memory_attention={"att_groups": 4, "att_query_groups": 8},
        memory_attention_variant="interlayer",
    )
    write_model_folder(args.out, config, seed=0, tokenizer_writer=write_bpe_tokenizer)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
