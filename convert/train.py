"""rxt-train: train a small RxT on the PyTorch reference (stages 1-4 of the RxT curriculum).

Runs on CUDA when present, else CPU; several processes through ``torchrun`` (gradients
all-reduced across ranks, each rank draws its own conversations, rank 0 writes). Every
``checkpoint_every`` steps it writes ``OUT/checkpoint.pt`` (model, optimizer, stage, step,
RNG); ``--resume`` continues from it. At the end it exports ``OUT/rxlm`` with the reference's
``save_rxlm`` (full layout) plus ``tokenizer.model``, ready for ``rxt-convert OUT/rxlm MLX_DIR``.

Example (the shipped demo): ``rxt-train --config configs/demo.json --out runs/demo``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from mlx.utils import tree_flatten
from tqdm import tqdm

import rxt_mlx
from rxt_mlx.bench import dialogues
from rxt_mlx.bench.free_chat import FreeChat
from rxt_mlx.config import (
    ConfigError,
    MemoryAttentionConfig,
    RxTConfig,
    TokenizerConfig,
    TransformerConfig,
    check_json_types,
)

from .bench_reference import load_mlx_weights_into
from .reference import RxTReference
from .reference.checkpoint import save_rxlm
from .tokenizer_train import TOKENIZER_FILE, TokenizerTrainingError, tokenizer_config, train_tokenizer
from .train_batches import InteractionTokenizer, collate_conversations, collate_interactions
from .train_stages import (
    STAGES,
    MaskedLMHead,
    conversation_step,
    history_step,
    joint_step,
    memory_attention_step,
)

CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_DIR = "rxlm"


@dataclass
class StageConfig:
    """Steps, batch size (interactions for joint, conversations otherwise) and peak learning rate.

    ``stop_at`` pauses the run at that step while the learning-rate schedule still spans
    ``steps``: the checkpoint keeps the stage, step and optimizer and the model is exported, so a
    later ``--resume`` with a higher ``stop_at`` (or none) continues the same schedule. Long
    trainings are split over sessions this way; a later segment may also branch from the paused
    weights with ``--init-from``.
    """

    steps: int = 0
    batch_size: int = 16
    lr: float = 1e-3
    stop_at: int | None = None


@dataclass
class TrainConfig:
    """Everything a run needs; read from ``--config`` JSON, then overridden by flags.

    ``stm_init``: ``random`` (a fresh N(0, 1) STM per conversation, any inference seed fits) or
    ``fixed`` (always ``rxt_mlx`` ``initial_stm(seed=stm_seed)``, the STM a ``Session`` starts
    from). ``curriculum_steps``: SFT/SMAT conversations grow from 2 turns to
    ``min_turns..max_turns`` over that many steps. ``recall_weight``: loss weight of the answer
    tokens of recall questions; ``statement_weight``: of the acknowledgements of statements (they
    repeat the value, and what the model answers there is what its memory update encodes) and of
    the answers to questions about facts never stated. ``truncate``: detach the STM every that many turns in SMAT.
    ``memory_gate``: ``elementwise`` (sigmoid of a per-slot scale times the slot's mean) or
    ``linear`` (sigmoid of a linear map over slots of a learned ``Linear(D, 1)`` slot status, so
    a slot decides from its content whether to keep its data or take the new), with bias or
    scale ``memory_gate_init``. ``made_up_values``: add made-up words to the job, color and
    food values; ``fresh_values``: draw half of the training values as new made-up words each time
    (see :func:`rxt_mlx.bench.dialogues.build_slots`); ``fresh_letters``: the share of those spelled
    like real words (doubled letters, "ph", "ch") rather than from syllables. ``open_values``: add
    the value pools of the data packages (thousands of real names, cities, jobs, colors, foods;
    :mod:`rxt_mlx.bench.open_data`) and more natural phrasings; ``free_chat``: free-form off-topic
    turns with generic replies, two facts in one message, questions about facts never stated
    (:mod:`rxt_mlx.bench.free_chat`).
    """

    seed: int = 0
    embed_dim: int = 128
    num_layers: int = 3
    att_heads: int = 4
    att_groups: int = 2
    ff_dim: int = 256
    stm_size: int = 32
    seq_len: int = 64
    memory_attention_variant: str = "simple"
    memory_gate: str = "elementwise"
    memory_gate_init: float = 3.0
    vocab_size: int = 768
    max_piece_length: int = 6
    tokenizer_conversations: int = 20000
    min_turns: int = 6
    max_turns: int = 10
    max_facts: int = 4
    made_up_values: bool = True
    fresh_values: bool = False
    fresh_letters: float = 0.0
    open_values: bool = False
    free_chat: bool = False
    truncate: int | None = None
    stm_init: str = "random"
    curriculum_steps: int = 0
    recall_weight: float = 1.0
    statement_weight: float = 1.0
    stm_seed: int = 0
    weight_decay: float = 0.01
    warmup_steps: int = 50
    checkpoint_every: int = 100
    threads: int | None = None
    stages: dict[str, StageConfig] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise SystemExit(f"{where}: unknown training settings {unknown} (expected some of {sorted(names)})")
        stages = values.get("stages") or {}
        bad = sorted(set(stages) - set(STAGES))
        if bad:
            raise SystemExit(f"{where}: unknown stages {bad} (expected {list(STAGES)})")
        if values.get("memory_gate", "elementwise") not in ("elementwise", "linear"):
            raise SystemExit(f"{where}: memory_gate must be 'elementwise' or 'linear', got {values['memory_gate']!r}")
        if values.get("stm_init", "random") not in ("random", "fixed"):
            raise SystemExit(f"{where}: stm_init must be 'random' or 'fixed', got {values['stm_init']!r}")
        config = cls(**{**values, "stages": {name: StageConfig(**stage) for name, stage in stages.items()}})
        try:
            check_json_types(config, where)
            for name, stage in config.stages.items():
                check_json_types(stage, f"{where} stages.{name}")
        except ConfigError as error:
            raise SystemExit(str(error)) from None
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stage(self, name: str) -> StageConfig:
        return self.stages.get(name, StageConfig())


def model_config(config: TrainConfig, vocab_size: int) -> RxTConfig:
    """The RxT config of a run: dense GQA decoder/encoder, gated memory attention."""
    decoder = TransformerConfig(
        num_layers=config.num_layers,
        vocab_size=vocab_size,
        embed_dim=config.embed_dim,
        att_heads=config.att_heads,
        att_groups=config.att_groups,
        ff_dim=config.ff_dim,
        seq_len=config.seq_len,
        stm_size=config.stm_size,
        self_att_type="gqa",
        use_attention_output_bias=False,
        use_head_norm=True,
        head_norm_type="rms_norm",
    )
    encoder = dataclasses.replace(decoder, skip_memory_cross_attention=True)
    memory_attention = MemoryAttentionConfig(
        num_layers=config.num_layers,
        embed_dim=config.embed_dim,
        att_heads=config.att_heads,
        att_groups=config.att_groups,
        att_type="gqa",
        stm_size=config.stm_size,
        seq_len=config.seq_len,
        use_gated_residual=True,
        residual_gate_type=config.memory_gate,
        residual_per_slot_gate=True,
        residual_gate_slot_status_type="linear" if config.memory_gate == "linear" else "mean",
        use_tanh_residual_gate=False,
        residual_gate_init=config.memory_gate_init,
    )
    rxt = RxTConfig(
        decoder,
        encoder,
        memory_attention,
        TokenizerConfig(**tokenizer_config()),
        config.memory_attention_variant,
    )
    rxt.validate()
    return rxt


# ---------------------------------------------------------------------------------------------
# Distributed helpers: plain all-reduce of gradients (the model is called per component, so
# DistributedDataParallel's single forward does not fit).


@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str | None, threads: int | None) -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        chosen = torch.device("cuda", local)
    else:
        chosen = torch.device(device or "cpu")
        torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    return Runtime(rank, world, chosen)


def all_reduce_gradients(parameters: list[torch.nn.Parameter], runtime: Runtime) -> None:
    if runtime.world == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= runtime.world


def barrier(runtime: Runtime) -> None:
    if runtime.world > 1:
        dist.barrier()


def share_from_main(runtime: Runtime, value):
    """Rank 0's ``value`` on every rank (a synchronisation point, like :func:`barrier`)."""
    if runtime.world == 1:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


# ---------------------------------------------------------------------------------------------


class ConversationSource:
    """Conversations for a step: synthetic (seeded by stage, step and rank) or from a JSONL list."""

    def __init__(self, config: TrainConfig, conversations: list[dialogues.Conversation] | None = None):
        self.config = config
        self.conversations = conversations
        self.slots = dialogues.build_slots(
            config.made_up_values, config.fresh_values, config.fresh_letters, config.open_values
        )
        self.chat = FreeChat.load() if config.free_chat else None

    def batch(self, stage: str, step: int, rank: int, count: int) -> list[dialogues.Conversation]:
        rng = random.Random(f"{self.config.seed}:{stage}:{step}:{rank}")
        if self.conversations is not None:
            return [rng.choice(self.conversations) for _ in range(count)]
        low, high = self.turn_range(stage, step)
        return [
            dialogues.generate_conversation(rng, "train", self.slots, low, high, self.config.max_facts, self.chat)
            for _ in range(count)
        ]

    def turn_range(self, stage: str, step: int) -> tuple[int, int]:
        """Conversation lengths of a step: in ``sft`` and ``smat`` they grow from 2 turns over ``curriculum_steps``."""
        c = self.config
        if stage not in ("sft", "smat") or step >= c.curriculum_steps:
            return c.min_turns, c.max_turns
        high = 2 + round((c.max_turns - 2) * step / c.curriculum_steps)
        return min(c.min_turns, high), high


def mlx_initial_stm(config: RxTConfig, seed: int) -> torch.Tensor:
    """``rxt_mlx.model.RxT.initial_stm(1, seed)`` as a torch tensor: the STM a Session starts from."""
    import mlx.core as mx
    import numpy as np

    layers, slots, dim = config.stm_shape
    stm = mx.random.normal((layers, 1, slots, dim), key=mx.random.key(seed))
    return torch.from_numpy(np.array(stm.astype(mx.float32)))


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    warmup = min(warmup, max(total // 10, 1))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.45 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


def stage_parameters(stage: str, model: RxTReference, mlm_head: MaskedLMHead) -> list[torch.nn.Parameter]:
    if stage == "memory":
        return list(model.memory_attention.parameters())
    if stage in ("sft", "smat"):
        return list(model.parameters())
    return list(model.parameters()) + list(mlm_head.parameters())


def make_optimizer(parameters, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic write: a crash mid-save leaves the previous checkpoint intact."""
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


class Trainer:
    """Runs the stages in order with checkpoints; ``run()`` then ``export()``."""

    def __init__(self, config: TrainConfig, out: Path, runtime: Runtime, tokenizer: InteractionTokenizer, source):
        self.config = config
        self.out = out
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.source = source
        torch.manual_seed(config.seed)
        self.model_config = model_config(config, tokenizer.vocab_size)
        self.model = RxTReference(self.model_config).to(runtime.device)
        self.mlm_head = MaskedLMHead(config.embed_dim, tokenizer.vocab_size).to(runtime.device)
        self.stage_index = 0
        self.step = 0
        self.optimizer_state: dict | None = None
        self.history: list[dict[str, Any]] = []
        self.fixed_stm: torch.Tensor | None = None

    # -- checkpoints ---------------------------------------------------------------------------

    def state(self, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        return {
            "config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "mlm_head": self.mlm_head.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "stage": self.stage_index,
            "step": self.step,
            "history": self.history,
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
        }

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.runtime.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.mlm_head.load_state_dict(state["mlm_head"])
        self.stage_index, self.step = state["stage"], state["step"]
        self.optimizer_state = state["optimizer"]
        self.history = state.get("history", [])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])

    def load_weights(self, path: Path, start_stage: str) -> None:
        """Model (and MLM head) weights of another run's checkpoint; training starts at ``start_stage``.

        ``path`` may also be an MLX model folder (e.g. ``rxt_mlx/demo``): its weights go back to
        rxlm names (:func:`rxt_mlx.weights.to_rxlm`); the MLM head keeps its initial weights.
        """
        if path.is_dir():
            model, _ = rxt_mlx.load(path)
            try:
                load_mlx_weights_into(self.model, dict(tree_flatten(model.parameters())))
            except ValueError as error:
                raise SystemExit(f"--init-from {path}: {error}") from None
            self.model.to(self.runtime.device)
            self.history = []
            self.stage_index, self.step = STAGES.index(start_stage), 0
            return
        state = torch.load(path, map_location=self.runtime.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.mlm_head.load_state_dict(state["mlm_head"])
        self.history = state.get("history", [])
        self.stage_index, self.step = STAGES.index(start_stage), 0

    def checkpoint(self, optimizer: torch.optim.Optimizer | None) -> None:
        if self.runtime.is_main:
            save_checkpoint(self.out / CHECKPOINT_FILE, self.state(optimizer))

    # -- stages --------------------------------------------------------------------------------

    def run(self) -> None:
        while self.stage_index < len(STAGES):
            name = STAGES[self.stage_index]
            if not self.run_stage(name):
                return
            self.stage_index += 1
            self.step = 0
            self.optimizer_state = None
            self.checkpoint(None)

    def run_stage(self, name: str) -> bool:
        """Train one stage from ``self.step``; False when ``stop_at`` paused it before its last step."""
        stage = self.config.stage(name)
        if self.step >= stage.steps:
            return True
        parameters = stage_parameters(name, self.model, self.mlm_head)
        optimizer = make_optimizer(parameters, self.config, stage.lr)
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        bar = tqdm(
            total=stage.steps,
            initial=self.step,
            desc=f"stage {self.stage_index + 1} {name}",
            disable=not self.runtime.is_main,
            dynamic_ncols=True,
        )
        started = time.monotonic()
        while self.step < min(stage.steps, stage.stop_at or stage.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(self.step, stage.steps, stage.lr, self.config.warmup_steps)
            loss, metrics = self.stage_loss(name, stage)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            all_reduce_gradients(parameters, self.runtime)
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            self.step += 1
            record = {"stage": name, "step": self.step, "loss": round(loss.item(), 4)}
            record.update({key: round(value, 4) for key, value in metrics.items()})
            record["seconds"] = round(time.monotonic() - started, 1)
            self.history.append(record)
            bar.set_postfix({k: v for k, v in record.items() if k not in ("stage", "step", "seconds")})
            bar.update(1)
            if self.step % self.config.checkpoint_every == 0 and self.step < stage.steps:
                self.checkpoint(optimizer)
        bar.close()
        if self.step < stage.steps:
            self.checkpoint(optimizer)
            return False
        return True

    def stage_loss(self, name: str, stage: StageConfig) -> tuple[torch.Tensor, dict[str, float]]:
        generator = torch.Generator().manual_seed(
            zlib.crc32(f"{self.config.seed}:{name}:{self.step}:{self.runtime.rank}".encode())
        )
        device = self.runtime.device
        pad = self.model_config.tokenizer.pad_token_id
        if name == "joint":
            count = -(-stage.batch_size // self.config.min_turns)
            conversations = self.source.batch(name, self.step, self.runtime.rank, count)
            batch = collate_interactions(self.tokenizer, conversations, pad, stage.batch_size).to(device)
            return joint_step(self.model, self.mlm_head, batch, generator)
        conversations = self.source.batch(name, self.step, self.runtime.rank, stage.batch_size)
        turns = [turn.to(device) for turn in collate_conversations(self.tokenizer, conversations, pad)]
        stm = self.initial_stm(len(conversations), generator)
        if name == "sft":
            return history_step(
                self.model, turns, stm, generator, self.config.recall_weight, self.config.statement_weight
            )
        if name == "memory":
            return memory_attention_step(self.model, turns, stm, generator)
        return conversation_step(
            self.model, turns, stm, self.config.truncate, self.config.recall_weight, self.config.statement_weight
        )

    def initial_stm(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """STM_0 of a training conversation: fresh N(0, 1) (``random``) or Session's default (``fixed``)."""
        if self.config.stm_init == "random":
            return self.model.initial_stm(batch, generator=generator)
        if self.fixed_stm is None:
            self.fixed_stm = mlx_initial_stm(self.model_config, self.config.stm_seed).to(self.runtime.device)
        return self.fixed_stm.expand(-1, batch, -1, -1)

    # -- export ----------------------------------------------------------------------------------

    def export(self, tokenizer_file: Path) -> Path:
        """``OUT/rxlm``: save_rxlm full layout + tokenizer.model + the training history."""
        folder = self.out / EXPORT_DIR
        save_rxlm(self.model.cpu(), folder, layout="full")
        shutil.copy(tokenizer_file, folder / TOKENIZER_FILE)
        (folder / "training.json").write_text(
            json.dumps({"train_config": self.config.to_dict(), "history": self.history}, indent=1)
        )
        return folder


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rxt-train",
        description="Train a small RxT (PyTorch reference) on recall dialogues: joint pre-training, SFT, "
        "memory-attention pre-training and memory-aware training over whole conversations.",
    )
    parser.add_argument("--config", type=Path, help="training config JSON (e.g. configs/demo.json)")
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt, tokenizer, rxlm/ export")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--data", type=Path, help="train on these JSONL conversations instead of synthetic ones")
    parser.add_argument("--tokenizer", type=Path, help="use this tokenizer.model instead of training one")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the config's, else all cores)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--embed-dim", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--stm-size", type=int)
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument(
        "--steps",
        nargs="+",
        metavar="STAGE=N",
        help=f"steps per stage, e.g. --steps joint=100 smat=2000 (stages: {', '.join(STAGES)})",
    )
    parser.add_argument("--batch-size", type=int, help="batch size of every stage")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument(
        "--init-from",
        type=Path,
        help="start from the model weights of this rxt-train checkpoint or MLX model folder (fresh optimizer)",
    )
    parser.add_argument(
        "--start-stage", choices=STAGES, default=STAGES[0], help="with --init-from: the first stage to run"
    )
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config:
        try:
            values = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"{args.config}: cannot read training config ({error})") from None
    config = TrainConfig.from_dict(values, str(args.config or "defaults"))
    for name in ("seed", "embed_dim", "num_layers", "stm_size", "vocab_size", "checkpoint_every", "threads"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    for item in args.steps or []:
        stage, _, count = item.partition("=")
        if stage not in STAGES or not count.isdigit():
            raise SystemExit(f"--steps {item!r}: expected STAGE=N with STAGE one of {', '.join(STAGES)}")
        config.stages.setdefault(stage, StageConfig()).steps = int(count)
    if args.batch_size:
        for stage in STAGES:
            config.stages.setdefault(stage, StageConfig()).batch_size = args.batch_size
    return config


def prepare_tokenizer(args, config: TrainConfig, runtime: Runtime, conversations) -> Path:
    """``OUT/tokenizer.model``: copied from ``--tokenizer`` or trained on the training data (rank 0)."""
    path = args.out / TOKENIZER_FILE
    failure = None
    if runtime.is_main and not path.exists():
        if args.tokenizer:
            shutil.copy(args.tokenizer, path)
        else:
            corpus = conversations or dialogues.generate_conversations(
                config.tokenizer_conversations,
                "train",
                config.seed,
                config.min_turns,
                config.max_turns,
                made_up_values=config.made_up_values,
            )
            try:
                train_tokenizer(
                    dialogues.template_lines(corpus), args.out, config.vocab_size, config.max_piece_length, config.seed
                )
            except TokenizerTrainingError as error:
                failure = str(error)
    failure = share_from_main(runtime, failure)  # also the barrier: the other ranks wait for the tokenizer
    if failure:
        raise TokenizerTrainingError(failure)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = resolve_config(args)
    runtime = setup_runtime(args.device, config.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    conversations = dialogues.load_jsonl(args.data) if args.data else None
    tokenizer_file = prepare_tokenizer(args, config, runtime, conversations)
    tokenizer = InteractionTokenizer(tokenizer_file, TokenizerConfig(**tokenizer_config()), config.seq_len)
    trainer = Trainer(config, args.out, runtime, tokenizer, ConversationSource(config, conversations))
    checkpoint = args.out / CHECKPOINT_FILE
    if args.resume:
        if not checkpoint.exists():
            raise SystemExit(f"--resume: {checkpoint} does not exist")
        trainer.load(checkpoint)
    elif args.init_from:
        trainer.load_weights(args.init_from, args.start_stage)
    if runtime.is_main:
        (args.out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    started = time.monotonic()
    trainer.run()
    if runtime.is_main:
        folder = trainer.export(tokenizer_file)
        print(f"trained in {time.monotonic() - started:.0f} s; exported {folder}", file=sys.stderr)
    if runtime.world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # torchrun -m rxt_convert.train: as rxt-train, errors as one line
    from rxt_convert.cli import train as run_train

    raise SystemExit(run_train())
