"""One timed interaction with the reference model (prefill + cached decoding), for benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .model import RxTReference


@dataclass
class TurnResult:
    """Generated tokens and timings of one turn (seconds)."""

    tokens: list[int]
    prompt_seconds: float
    token_seconds: list[float] = field(default_factory=list)
    new_stm: torch.Tensor | None = None
    memory_update_seconds: float | None = None

    @property
    def decode_tokens_per_second(self) -> float:
        total = sum(self.token_seconds)
        return len(self.token_seconds) / total if total > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_turn(
    model: RxTReference,
    query_ids: list[int] | torch.Tensor,
    stm: torch.Tensor,
    max_new_tokens: int,
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    eos_id: int | None = None,
    force_tokens: list[int] | None = None,
    update_memory: bool = False,
    generator: torch.Generator | None = None,
) -> TurnResult:
    """Answer ``query_ids`` (``[BOS][Q]query[A]``) from ``stm`` with O(1) work per token.

    STM keys/values are projected once, self-attention uses a KV cache. ``force_tokens``
    makes the answer exactly those ids (the logits are still computed every step).
    With ``update_memory`` the interaction (query + answer) is encoded and the new STM returned.

    Returns:
        :class:`TurnResult`; ``prompt_seconds`` covers the memory projection, prefill and the
        first token, ``token_seconds`` every later token.
    """
    device = model.decoder.model.head.weight.device
    ids = torch.as_tensor(query_ids, dtype=torch.long, device=device).reshape(1, -1)
    limit = len(force_tokens) if force_tokens is not None else max_new_tokens
    tokens: list[int] = []
    token_seconds: list[float] = []
    _sync(device)
    start = time.perf_counter()
    memory = model.decoder.project_memory(stm.to(device))
    cache = model.decoder.make_cache()
    step_input = ids
    prompt_seconds = 0.0
    for step in range(limit):
        logits = model.decoder(step_input, cache=cache, memory=memory)[:, -1]
        if force_tokens is not None:
            token = int(force_tokens[step])
        elif greedy:
            token = int(logits.argmax(-1))
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        _sync(device)
        now = time.perf_counter()
        if step == 0:
            prompt_seconds = now - start
        else:
            token_seconds.append(now - start)
        start = now
        tokens.append(token)
        if force_tokens is None and eos_id is not None and token == eos_id:
            break
        step_input = torch.tensor([[token]], device=device)
    result = TurnResult(tokens, prompt_seconds, token_seconds)
    if update_memory:
        interaction = torch.cat((ids, torch.tensor([tokens], dtype=torch.long, device=device)), dim=1)
        start = time.perf_counter()
        result.new_stm = model.update_memory(stm.to(device), interaction)
        _sync(device)
        result.memory_update_seconds = time.perf_counter() - start
    return result
