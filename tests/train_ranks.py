"""rxt-train with hooks for tests/test_train_distributed.py, run as a script in a fresh process.

``python tests/train_ranks.py report ARGS`` (under torchrun: one process per rank) runs
``rxt-train ARGS`` and writes ``OUT/rank{rank}.pt``: the world size, the paths this rank saved
checkpoints to and the rank's final weights.

``python tests/train_ranks.py simulate ARGS`` runs ``rxt-train ARGS`` in one process as if it
were rank 0 of two: after each backward pass it computes rank 1's gradient (rank 1's
conversations and noise, the same weights) and steps with ``(g0 + g1) / 2``, which is what the
all-reduce and the division by the world size give (docs/architecture.md §Training).

Both run in fresh processes so that they compute with the same libraries (the test session
loads another BLAS, which changes torch's float rounding).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import torch
from rxt_convert import train


def report(argv: list[str]) -> int:
    saves: list[str] = []
    save_checkpoint, run = train.save_checkpoint, train.Trainer.run

    def counted_save(path, state):
        saves.append(str(path))
        save_checkpoint(path, state)

    def run_and_report(self):
        run(self)
        state = {"world": self.runtime.world, "saves": saves, "model": self.model.state_dict()}
        torch.save(state, self.out / f"rank{self.runtime.rank}.pt")

    train.save_checkpoint = counted_save
    train.Trainer.run = run_and_report
    return train.main(argv)


def simulate(argv: list[str]) -> int:
    stage_loss = train.Trainer.stage_loss
    rank_1_losses: list[Callable[[], tuple[torch.Tensor, dict]]] = []

    def loss_of(trainer, name, stage, rank):
        trainer.runtime = dataclasses.replace(trainer.runtime, rank=rank)
        try:
            return stage_loss(trainer, name, stage)
        finally:
            trainer.runtime = dataclasses.replace(trainer.runtime, rank=0)

    def rank_0_loss(self, name, stage):
        rank_1_losses.append(lambda: loss_of(self, name, stage, rank=1))
        return stage_loss(self, name, stage)

    def mean_of_both_ranks(parameters, runtime):
        rank_0 = [parameter.grad for parameter in parameters]
        for parameter in parameters:
            parameter.grad = None
        loss, _ = rank_1_losses.pop()()
        loss.backward()
        for parameter, gradient in zip(parameters, rank_0, strict=True):
            if gradient is not None:
                parameter.grad = (gradient + parameter.grad) / 2

    train.Trainer.stage_loss = rank_0_loss
    train.all_reduce_gradients = mean_of_both_ranks
    return train.main(argv)


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    sys.exit({"report": report, "simulate": simulate}[mode](arguments))
