"""Turn conversations into padded tensors for the training stages.

One interaction is ``[BOS][Q]query[A]answer[EOS]`` (the inference template). The decoder's
next-token targets are the input shifted by one; the answer mask marks targets that are
answer tokens or the final EOS, the recall mask the answer targets of recall questions.
Conversations of different lengths are batched turn by turn: a conversation without turn k
is inactive there (its STM is kept and its loss is masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import sentencepiece as spm
import torch

from rxt_mlx.bench.dialogues import Conversation, Turn
from rxt_mlx.config import TokenizerConfig


class InteractionTokenizer:
    """Encodes turns with a sentencepiece model and the template ids of ``tokenizer_config``."""

    def __init__(self, model_file: str, tokenizer: TokenizerConfig, max_length: int):
        self.processor = spm.SentencePieceProcessor(model_file=str(model_file))
        self.ids = tokenizer
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def interaction(self, turn: Turn) -> tuple[list[int], int]:
        """(ids, index of the first answer token), truncated to ``max_length``."""
        ids = self.ids
        prompt = [ids.bos_token_id, ids.query_token_id, *self.encode(turn.query), ids.answer_token_id]
        full = prompt + self.encode(turn.answer) + [ids.eos_token_id]
        return full[: self.max_length], min(len(prompt), self.max_length)


@dataclass
class TurnBatch:
    """One turn of a batch of conversations (or a batch of independent interactions).

    Shapes: ``input_ids``, ``attention_mask`` ``(B, T)``; ``answer_mask``, ``recall_mask`` (the
    answers of recall questions), ``statement_mask`` (the answers of statements and of questions
    about facts never stated) ``(B, T-1)`` aligned with the targets ``input_ids[:, 1:]``;
    ``active`` ``(B,)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    recall_mask: torch.Tensor
    statement_mask: torch.Tensor
    active: torch.Tensor

    def to(self, device: torch.device | str) -> TurnBatch:
        return TurnBatch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, 1:]


def collate_turns(tokenizer: InteractionTokenizer, turns: list[Turn | None], pad_id: int) -> TurnBatch:
    """Pad a list of turns (None = inactive slot) into one :class:`TurnBatch`."""
    encoded = [tokenizer.interaction(turn) if turn is not None else ([pad_id, pad_id], 2) for turn in turns]
    length = max(len(ids) for ids, _ in encoded)
    batch = len(turns)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.bool)
    answer_mask = torch.zeros((batch, length - 1), dtype=torch.bool)
    recall_mask = torch.zeros((batch, length - 1), dtype=torch.bool)
    statement_mask = torch.zeros((batch, length - 1), dtype=torch.bool)
    for row, ((ids, answer_start), turn) in enumerate(zip(encoded, turns, strict=True)):
        if turn is None:
            # one visible PAD token: a fully masked row would make attention NaN (and its gradients)
            attention_mask[row, 0] = True
            continue
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = True
        answer_mask[row, answer_start - 1 : len(ids) - 1] = True
        if turn.kind == "question":
            recall_mask[row, answer_start - 1 : len(ids) - 1] = True
        elif turn.kind in ("statement", "not_told"):
            statement_mask[row, answer_start - 1 : len(ids) - 1] = True
    active = torch.tensor([turn is not None for turn in turns])
    return TurnBatch(input_ids, attention_mask, answer_mask, recall_mask, statement_mask, active)


def collate_conversations(
    tokenizer: InteractionTokenizer, conversations: list[Conversation], pad_id: int
) -> list[TurnBatch]:
    """One :class:`TurnBatch` per turn index, up to the longest conversation."""
    num_turns = max(len(conversation.turns) for conversation in conversations)
    return [
        collate_turns(
            tokenizer,
            [c.turns[index] if index < len(c.turns) else None for c in conversations],
            pad_id,
        )
        for index in range(num_turns)
    ]


def collate_interactions(
    tokenizer: InteractionTokenizer, conversations: list[Conversation], pad_id: int, batch_size: int
) -> TurnBatch:
    """The first ``batch_size`` interactions of ``conversations``, as independent rows."""
    turns = [turn for conversation in conversations for turn in conversation.turns][:batch_size]
    return collate_turns(tokenizer, turns, pad_id)
