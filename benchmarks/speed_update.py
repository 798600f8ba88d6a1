"""Does a finished memory update delay the next query's TTFT? rxt-bench's probe, A/B in one process.

Usage: python benchmarks/speed_update.py MODEL_DIR [--repeats 15]

Alternately: a whole turn (answer + memory update) then the TTFT of a query from the new STM
("after"), and the same query again from the same STM ("without" an update just before), on
scratch sessions as rxt-bench does; and the TTFT of the next turn of the same session. The
``lazy`` variant leaves the STM's decoder projection to the next query (the behaviour before
``Session`` projected the STM when it changes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from rxt_mlx.blas import preload_optimised_blas

preload_optimised_blas()

import mlx.core as mx  # noqa: E402

from rxt_mlx import load  # noqa: E402
from rxt_mlx.bench.systems import measure, query_text  # noqa: E402
from rxt_mlx.sampling import forced_tokens_processor  # noqa: E402
from rxt_mlx.session import Session, TokenEvent  # noqa: E402

_eager = Session._set_stm


def _lazy(self, stm):
    mx.eval(stm)
    self._stm, self._memory = stm, self.model.decoder.project_memory(stm)


def probe(model, tokenizer, lazy: bool) -> dict[str, float]:
    Session._set_stm = _lazy if lazy else _eager
    session = Session(model, tokenizer, stm=model.initial_stm(batch=1, seed=0))
    first_query, query = query_text(tokenizer.encode, 32, 1), query_text(tokenizer.encode, 32, 2)
    answer = [20 + i for i in range(32)]

    def ttft(events) -> float:
        return measure(event.id for event in events if isinstance(event, TokenEvent)).ttft_seconds * 1000

    def forced() -> dict:
        return {"max_tokens": len(answer), "logits_processors": [forced_tokens_processor(answer)]}

    def scratch() -> float:
        return ttft(Session(model, tokenizer, stm=session.stm).generate(query, **forced()))

    for _ in session.interact(first_query, **forced()):
        pass
    result = {"after": scratch(), "without": scratch()}
    result["same_session_next_turn"] = ttft(session.generate(query, **forced()))
    Session._set_stm = _eager
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    model, tokenizer = load(args.model)
    times = {}
    for _ in range(args.repeats + 2):
        for lazy in (False, True):
            for name, value in probe(model, tokenizer, lazy).items():
                times.setdefault(f"{'lazy' if lazy else 'eager'}_{name}", []).append(value)
    medians = {name: statistics.median(values[2:]) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:<34} {value:8.2f} ms")
    for variant in ("eager", "lazy"):
        print(f"{variant} after/without {medians[f'{variant}_after'] / medians[f'{variant}_without']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
