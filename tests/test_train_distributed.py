"""rxt-train under torchrun: two CPU processes (gloo) against the same run simulated in one process.

Each rank draws its own conversations and noise, and every update uses the mean of the ranks'
gradients (docs/architecture.md §Training). So the two-process run must end bit for bit where a
one-process run ends that steps with the mean of rank 0's and rank 1's gradients (with rank 0's
losses in its history), both ranks must hold the same weights, and only rank 0 writes.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rxt_convert import train
from rxt_convert.reference.checkpoint import load_reference

from tests.test_train import TINY

pytestmark = pytest.mark.slow

RANKS_SCRIPT = Path(__file__).with_name("train_ranks.py")
STAGES = {
    "joint": {"steps": 4, "batch_size": 8, "lr": 0.01},
    "sft": {"steps": 2, "batch_size": 2, "lr": 0.003},
    "memory": {"steps": 2, "batch_size": 2, "lr": 0.003},
    "smat": {"steps": 2, "batch_size": 2, "lr": 0.003},
}
CHECKPOINT_EVERY = 2
# rank 0 saves every CHECKPOINT_EVERY steps within a stage (not at its last step) and after each stage
SAVES = sum(len(range(CHECKPOINT_EVERY, stage["steps"], CHECKPOINT_EVERY)) + 1 for stage in STAGES.values())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def history(folder: Path) -> list[dict]:
    return json.loads((folder / "rxlm" / "training.json").read_text())["history"]


def run(command: list[str], port: int) -> None:
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(the one-process simulation of two ranks, the torchrun run), same config and tokenizer."""
    folder = tmp_path_factory.mktemp("distributed")
    config = folder / "tiny.json"
    settings = {"checkpoint_every": CHECKPOINT_EVERY, "min_turns": 2, "max_turns": 3, "stages": STAGES}
    config.write_text(json.dumps({**TINY, **settings}))
    simulated, distributed = folder / "simulated", folder / "torchrun"
    arguments = ["--config", str(config), "--device", "cpu"]
    port = free_port()
    run([sys.executable, str(RANKS_SCRIPT), "simulate", *arguments, "--out", str(simulated)], port)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", str(port), str(RANKS_SCRIPT), "report"]
    tokenizer = ["--tokenizer", str(simulated / "tokenizer.model")]
    run([*torchrun, *arguments, *tokenizer, "--out", str(distributed)], port)
    return simulated, distributed


def test_both_ranks_end_with_the_same_weights_and_only_rank_0_writes(runs):
    _, distributed = runs
    assert sorted(path.name for path in distributed.iterdir()) == [
        "checkpoint.pt",
        "rank0.pt",
        "rank1.pt",
        "rxlm",
        "tokenizer.model",
        "train_config.json",
    ]
    ranks = [torch.load(distributed / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [state["world"] for state in ranks] == [2, 2]
    assert ranks[0]["saves"] == [str(distributed / "checkpoint.pt")] * SAVES
    assert ranks[1]["saves"] == []
    assert ranks[0]["model"].keys() == ranks[1]["model"].keys()
    checkpoint = torch.load(distributed / "checkpoint.pt", weights_only=False)
    assert (checkpoint["stage"], checkpoint["step"]) == (len(train.STAGES), 0)
    exported = load_reference(distributed / "rxlm").state_dict()
    for key, value in ranks[0]["model"].items():
        assert torch.equal(ranks[1]["model"][key], value), key
        assert torch.equal(checkpoint["model"][key], value), key
        assert torch.equal(exported[key], value), key


def test_torchrun_steps_with_the_mean_gradient_of_both_ranks(runs):
    simulated, distributed = runs
    expected, actual = history(simulated), history(distributed)
    assert [(r["stage"], r["step"]) for r in actual] == [(r["stage"], r["step"]) for r in expected]
    assert len(actual) == sum(stage["steps"] for stage in STAGES.values())
    assert [r["loss"] for r in actual] == [r["loss"] for r in expected]
    joint = [r["loss"] for r in actual if r["stage"] == "joint"]
    assert joint[-1] < joint[0]

    expected_weights = load_reference(simulated / "rxlm").state_dict()
    actual_weights = load_reference(distributed / "rxlm").state_dict()
    assert actual_weights.keys() == expected_weights.keys()
    for key, value in expected_weights.items():
        assert torch.equal(actual_weights[key], value), key
