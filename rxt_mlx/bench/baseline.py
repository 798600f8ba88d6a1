"""The stateless baseline of rxt-bench: an mlx-lm Llama decoder with the RxT decoder's dimensions.

A stateless chat model answers every turn from the whole conversation so far. Two forms:
``keep_cache=False`` re-reads (re-prefills) the whole history each turn; ``keep_cache=True``
keeps its mlx-lm KV cache across turns and prefills only the tokens it has not seen, which is
the strongest form a stateless model can take. Decoding is mlx-lm's own ``generate_step``
(greedy) with a logits processor that forces the scripted answer, so the model does exactly the
work of a free greedy decode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.models.llama import MLP, Model, ModelArgs

from rxt_mlx.config import FLOAT32_EPS, TransformerConfig
from rxt_mlx.sampling import forced_tokens_processor


@dataclass(frozen=True)
class BaselineShape:
    """Dimensions of the baseline decoder and how they were derived from the RxT decoder."""

    hidden_size: int
    num_layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    layer_ff_dims: tuple[int, ...]
    vocab_size: int
    rope_base: float
    notes: tuple[str, ...]


def _moe_active_width(decoder: TransformerConfig) -> int:
    return decoder.moe_top_k * decoder.ff_dim + decoder.num_shared_experts * decoder.shared_dim


def baseline_shape(decoder: TransformerConfig) -> BaselineShape:
    """Baseline dimensions matching ``decoder``: width, total depth, self-attention heads, FFN, vocab.

    Depth counts the stateless, stateful and final stateless layers. A MoE layer is matched by a
    dense SwiGLU of the *active* width (``moe_top_k * ff_dim + num_shared_experts * shared_dim``).
    """
    attention = decoder.self_attention_shape("decoder_config")
    notes = [
        f"layers = {len(decoder.stateless_layers_config or [])} stateless + {decoder.num_layers} stateful"
        f" + {len(decoder.final_stateless_layers_config or [])} final stateless (RxT decoder total)",
        f"self-attention {attention.query_heads} query heads / {attention.kv_heads} kv heads, "
        f"head_dim {attention.head_dim} (RxT {decoder.self_att_type})",
    ]
    query_heads, kv_heads = attention.query_heads, attention.kv_heads
    if query_heads % kv_heads:
        # mlx-lm attention repeats kv heads over query heads; rxlm attends with max(q, kv) heads.
        query_heads = kv_heads = attention.out_heads
        notes.append(f"query heads not a multiple of kv heads: baseline uses {query_heads}/{kv_heads}")
    moe_width = _moe_active_width(decoder)
    stateless_kinds = decoder.stateless_layers_config or []
    final_kinds = decoder.final_stateless_layers_config or []
    widths = [decoder.dense_layer_dim if kind == "dense" else moe_width for kind in stateless_kinds]
    widths += [moe_width if decoder.use_moe else decoder.ff_dim] * decoder.num_layers
    widths += [decoder.dense_layer_dim if kind == "dense" else moe_width for kind in final_kinds]
    if decoder.use_moe or "moe" in stateless_kinds + final_kinds:
        notes.append(
            f"MoE layers matched by a dense SwiGLU of the active width {moe_width} "
            f"({decoder.moe_top_k} x {decoder.ff_dim} routed + {decoder.num_shared_experts} x "
            f"{decoder.shared_dim} shared)"
        )
    if not decoder.use_gated:
        notes.append("RxT FFN is not gated; the baseline's FFN is SwiGLU (one more matrix)")
    return BaselineShape(
        hidden_size=decoder.embed_dim,
        num_layers=len(widths),
        query_heads=query_heads,
        kv_heads=kv_heads,
        head_dim=attention.head_dim,
        layer_ff_dims=tuple(widths),
        vocab_size=decoder.vocab_size,
        rope_base=decoder.rope_base,
        notes=tuple(notes),
    )


def build_baseline(shape: BaselineShape, *, seed: int = 0, dtype: mx.Dtype = mx.float32) -> Model:
    """An mlx-lm Llama ``Model`` of ``shape`` with random weights, evaluated and cast to ``dtype``."""
    args = ModelArgs(
        model_type="llama",
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        intermediate_size=shape.layer_ff_dims[0],
        num_attention_heads=shape.query_heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        rms_norm_eps=FLOAT32_EPS,
        vocab_size=shape.vocab_size,
        rope_theta=shape.rope_base,
        mlp_bias=True,
        tie_word_embeddings=False,
    )
    mx.random.seed(seed)
    model = Model(args)
    for layer, width in zip(model.layers, shape.layer_ff_dims, strict=True):
        if width != args.intermediate_size:
            layer.mlp = MLP(replace(args, intermediate_size=width))
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model


class StatelessChat:
    """One conversation with a stateless decoder that re-reads the history every turn.

    Args:
        model: an mlx-lm model (see :func:`build_baseline`).
        keep_cache: keep the KV cache across turns and prefill only the new tokens; when false,
            every turn starts from an empty cache and prefills the whole history.
    """

    def __init__(self, model: Model, *, keep_cache: bool):
        self.model = model
        self.keep_cache = keep_cache
        self.history: list[int] = []
        self._cache = make_prompt_cache(model) if keep_cache else None
        self._cached_tokens = 0

    def prompt_for(self, query_ids: Sequence[int]) -> list[int]:
        """The tokens this turn has to prefill for ``query_ids``."""
        seen = self._cached_tokens if self.keep_cache else 0
        return self.history[seen:] + list(query_ids)

    def answer(
        self,
        query_ids: Sequence[int],
        answer_ids: Sequence[int],
        end_ids: Sequence[int] = (),
        *,
        commit: bool = True,
    ) -> Iterator[int]:
        """Yield the answer tokens as they are decoded, forced to ``answer_ids``.

        When the answer is complete, ``query_ids + answer_ids + end_ids`` joins the history; with
        ``commit=False`` the conversation is left as it was (the kept cache is trimmed back), so
        the same turn can be timed again.
        """
        prompt = self.prompt_for(query_ids)
        cache = self._cache if self.keep_cache else make_prompt_cache(self.model)
        offset = cache[0].offset
        processor = forced_tokens_processor(answer_ids)
        steps = generate_step(
            mx.array(prompt, dtype=mx.int32),
            self.model,
            max_tokens=len(answer_ids),
            logits_processors=[processor],
            prompt_cache=cache,
        )
        for token, _ in steps:
            yield token
        mx.synchronize()
        if not commit:
            for layer_cache in cache:
                layer_cache.trim(layer_cache.offset - offset)
            return
        self.history += [*query_ids, *answer_ids, *end_ids]
        # generate_step fed every answer token back (the last one for a step it then drops).
        self._cached_tokens = cache[0].offset if self.keep_cache else 0
