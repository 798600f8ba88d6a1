"""Losses of the four supervised stages of the RxT training curriculum (paper §4, loosely).

1. ``joint``: joint decoder/encoder pre-training on single interactions. The encoder reads a
   masked copy and predicts the masked tokens (MLM head); the decoder predicts every next
   token while cross-attending to the encoder's detached, noised hidden states of the same
   interaction in place of the STM.
2. ``sft``: interaction SFT over conversations: the decoder answers each turn reading the
   encoder states of all earlier interactions (a lossless stand-in for the STM), so it learns
   to retrieve facts before memory attention learns to store them.
3. ``memory``: self-supervised memory-attention pre-training. Over a conversation, the new
   STM is pulled (negative cosine similarity) towards ``w_t * ED_t + (1 - w_t) * STM_{t-1}``
   (``ED_t`` = encoder states pooled over tokens), ``w_t`` annealed from 0.9 down over the
   turns; only memory attention learns.
4. ``smat``: supervised memory-aware training over whole conversations: the decoder answers
   turn t from STM_{t-1} (answer-token loss), then encoder + memory attention give STM_t;
   gradients flow through the memory updates (truncated every ``truncate`` turns if set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .train_batches import TurnBatch

STAGES = ("joint", "sft", "memory", "smat")


class MaskedLMHead(nn.Module):
    """Training-only MLM head on the encoder's last layer (dense, GELU, LayerNorm, vocab)."""

    def __init__(self, embed_dim: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.decoder = nn.Linear(embed_dim, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(hidden))))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def decoder_loss(logits: torch.Tensor, batch: TurnBatch, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target cross-entropy ``(B, T-1)`` and correctness, for the targets in ``mask``."""
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.targets, reduction="none")
    correct = (logits[:, :-1].argmax(-1) == batch.targets) & mask
    return per_token, correct


class AnswerScore:
    """Weighted answer loss and teacher-forced recall over the turns of a batch of conversations.

    Answer tokens of recall questions weigh ``recall_weight`` times the others, those of
    statements (whose acknowledgement repeats the value) and of questions about facts never stated
    ``statement_weight`` times; a question is recalled when every token of its answer is the argmax.
    """

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device)
        self.count = 0.0
        self.recalled = 0
        self.questions = 0

    def add(self, logits: torch.Tensor, batch: TurnBatch, recall_weight: float, statement_weight: float = 1.0) -> None:
        per_token, correct = decoder_loss(logits, batch, batch.answer_mask)
        weights = batch.answer_mask.float() + (recall_weight - 1) * batch.recall_mask.float()
        weights = weights + (statement_weight - 1) * batch.statement_mask.float()
        self.total = self.total + (per_token * weights).sum()
        self.count += float(weights.sum())
        is_question = batch.recall_mask.any(dim=1)
        self.recalled += int(((correct | ~batch.recall_mask).all(dim=1) & is_question).sum())
        self.questions += int(is_question.sum())

    @property
    def loss(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    @property
    def recall(self) -> float:
        return self.recalled / max(self.questions, 1)


def joint_step(
    model,
    mlm_head: MaskedLMHead,
    batch: TurnBatch,
    generator: torch.Generator,
    *,
    mask_probability: float = 0.15,
    mask_token_id: int = 1,
    noise: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1: encoder MLM + decoder LM (every token) reading the encoder's noised states."""
    ids, attention = batch.input_ids, batch.attention_mask
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    masked = (draw < mask_probability) & attention
    masked[:, 0] = False
    encoder_ids = torch.where(masked, torch.full_like(ids, mask_token_id), ids)
    hidden = model.encoder(encoder_ids, attention)
    mlm_logits = mlm_head(hidden[-1])
    mlm_loss = _masked_mean(F.cross_entropy(mlm_logits.transpose(1, 2), ids, reduction="none"), masked)
    memory = hidden.detach()
    memory = memory + noise * torch.randn(memory.shape, generator=generator).to(memory.device)
    memory = memory * attention[None, :, :, None]
    logits = model.decoder(ids, memory)
    targets = attention[:, 1:]
    per_token, correct = decoder_loss(logits, batch, targets)
    lm_loss = _masked_mean(per_token, targets)
    accuracy = correct.sum().item() / max(targets.sum().item(), 1)
    return lm_loss + mlm_loss, {"lm": lm_loss.item(), "mlm": mlm_loss.item(), "acc": accuracy}


def history_step(
    model,
    turns: list[TurnBatch],
    stm: torch.Tensor,
    generator: torch.Generator,
    recall_weight: float = 1.0,
    statement_weight: float = 1.0,
    noise: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 2: interaction SFT where the decoder reads the conversation's encoded history.

    The memory of turn t is ``[STM_0, ED_0, ..., ED_{t-1}]`` (initial STM and the encoder states
    of every earlier interaction, noised, concatenated over tokens): a lossless memory that
    teaches the decoder to retrieve facts and the encoder to encode them, before memory
    attention has to learn to compress them into the STM.
    """
    memory = [stm]
    score = AnswerScore(stm.device)
    for batch in turns:
        logits = model.decoder(batch.input_ids, torch.cat(memory, dim=2))
        score.add(logits, batch, recall_weight, statement_weight)
        hidden = model.encoder(batch.input_ids, batch.attention_mask)
        hidden = hidden + noise * torch.randn(hidden.shape, generator=generator).to(hidden.device)
        memory.append(hidden * (batch.attention_mask & batch.active[:, None])[None, :, :, None])
    return score.loss, {"recall": score.recall}


def memory_weights(turn: int, start: float = 0.9, step: float = 0.1, floor: float = 0.3) -> float:
    """New-data weight of turn ``turn`` in the stage-3 target (0.9, then annealed down)."""
    return max(start - step * turn, floor) if turn else start


def memory_attention_step(
    model, turns: list[TurnBatch], stm: torch.Tensor, generator: torch.Generator, noise: float = 0.05
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 3: cosine loss of memory attention against a weighted mean of old STM and new data."""
    losses = []
    for index, batch in enumerate(turns):
        with torch.no_grad():
            hidden = model.encoder(batch.input_ids, batch.attention_mask)
            weights = batch.attention_mask[None, :, :, None].to(hidden.dtype)
            pooled = (hidden * weights).sum(2, keepdim=True) / weights.sum(2, keepdim=True).clamp(min=1.0)
            weight = memory_weights(index)
            target = weight * pooled + (1 - weight) * stm
            target = target + noise * torch.randn(target.shape, generator=generator).to(target.device)
        new_stm = model.memory_attention(stm, hidden, batch.attention_mask)
        similarity = F.cosine_similarity(new_stm, target, dim=-1).mean(dim=(0, 2))
        losses.append(_masked_mean(1 - similarity, batch.active))
        active = batch.active[None, :, None, None]
        stm = torch.where(active, new_stm, stm).detach()
    loss = torch.stack(losses).mean()
    return loss, {"cos": 1 - loss.item()}


def conversation_step(
    model,
    turns: list[TurnBatch],
    stm: torch.Tensor,
    truncate: int | None = None,
    recall_weight: float = 1.0,
    statement_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 4: answer every turn from the previous STM, update the STM, backprop through it.

    Answer tokens weigh as :class:`AnswerScore` says.
    """
    score = AnswerScore(stm.device)
    for index, batch in enumerate(turns):
        if truncate and index and index % truncate == 0:
            stm = stm.detach()
        logits = model.decoder(batch.input_ids, stm)
        score.add(logits, batch, recall_weight, statement_weight)
        if index + 1 < len(turns):
            new_stm = model.update_memory(stm, batch.input_ids, batch.attention_mask)
            stm = torch.where(batch.active[None, :, None, None], new_stm, stm)
    return score.loss, {"recall": score.recall}
