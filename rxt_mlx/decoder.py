"""The RxT decoder: stateless layers, stateful layers reading the STM, head.

Also defines :class:`TransformerLayer`, the pre-norm layer shared with the encoder.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from rxt_mlx.attention import Attention, Rope, RotaryTables
from rxt_mlx.cache import KVCache
from rxt_mlx.config import AttentionShape, TransformerConfig
from rxt_mlx.cpu_matmul import linear_rows
from rxt_mlx.feedforward import feed_forward
from rxt_mlx.layers import layer_norm, rms_norm, transformer_norm

MemoryKV = list[tuple[mx.array, mx.array]]


def component_rope(config: TransformerConfig) -> Rope | None:
    """The rotary embedding shared by all attentions of a decoder/encoder (None with use_nope)."""
    if config.use_nope:
        return None
    return Rope(config.embed_dim // config.att_heads, float(config.rope_base))


def _attention(
    config: TransformerConfig, shape: AttentionShape, gated: bool, rope: Rope | None, rope_keys: bool = True
) -> Attention:
    return Attention(
        config.embed_dim,
        shape,
        output_bias=config.use_attention_output_bias,
        gated=gated,
        gate_activation=config.gated_attention_activation,
        rope=rope,
        rope_keys=rope_keys,
    )


class TransformerLayer(nn.Module):
    """rxlm layer: ``x += SelfAttn(norm1 x)``; ``x += CrossAttn(norm2 x, stm_norm STM)``; ``x += FF(norm3 x)``.

    Args:
        config: decoder or encoder config.
        ff_kind: 'moe', 'dense' (stateless dense layer) or 'ff' (dense with ff_dim).
        memory_cross_attention: whether the layer owns the STM cross-attention.
    """

    def __init__(self, config: TransformerConfig, ff_kind: str, memory_cross_attention: bool):
        super().__init__()
        dim, rope = config.embed_dim, component_rope(config)
        self.attention = _attention(config, config.self_attention_shape(), config.use_gated_attention, rope)
        self.norm1 = transformer_norm(dim, config.use_rms_norm)
        if memory_cross_attention:
            self.memory_cross_attention = _attention(
                config, config.cross_attention_shape(), config.gated_cross_attention, rope, rope_keys=False
            )
            self.norm2 = transformer_norm(dim, config.use_rms_norm)
            self.stm_norm = transformer_norm(dim, config.use_rms_norm)
        self.ff = feed_forward(config, ff_kind)
        self.norm3 = transformer_norm(dim, config.use_rms_norm)

    def project_memory(self, stm_layer: mx.array) -> tuple[mx.array, mx.array]:
        """Cross-attention keys/values of one STM layer (B, S, D); no RoPE on memory keys.

        Made contiguous once per turn: every token's attention then reads them in place (MLX
        copies a strided operand of a matrix product, 1.4x slower decode at Alpha-Mini size).
        """
        keys, values = self.memory_cross_attention.project_kv(self.stm_norm(stm_layer))
        return mx.contiguous(keys), mx.contiguous(values)

    def __call__(
        self,
        x: mx.array,
        *,
        mask: mx.array | str | None,
        memory: tuple[mx.array, mx.array] | None = None,
        cache: KVCache | None = None,
        offset: int | mx.array | RotaryTables = 0,
    ) -> mx.array:
        """The layer over ``x`` (B, T, D) whose first position is ``offset`` (or its RoPE tables).

        ``memory``: this layer's projected STM keys/values; ``cache``: its self-attention cache
        (which then decides the self-attention mask, see :meth:`KVCache.update_and_fetch`).
        """
        x = x + self.attention(self.norm1(x), mask=mask, cache=cache, offset=offset)
        if memory is not None:
            x = x + self.memory_cross_attention(self.norm2(x), kv=memory, offset=offset)
        return x + self.ff(self.norm3(x))


class Decoder(nn.Module):
    """Causal decoder: embedding, stateless layers, stateful layers, final stateless layers, head.

    One forward path serves prefill and decode. A call with a single token per row over a
    filled cache runs compiled (traced once per cache capacity, see :class:`KVCache`); the
    module's arrays are live inputs of the compiled function, so replaced or quantized weights
    are picked up (after swapping code without changing any array, say an activation, set
    ``_compiled_step = None``).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        stateful_kind = "moe" if config.use_moe else "ff"
        if config.stateless_layers_config:
            self.stateless_layers = [TransformerLayer(config, kind, False) for kind in config.stateless_layers_config]
        self.layers = [TransformerLayer(config, stateful_kind, True) for _ in range(config.num_layers)]
        if config.final_stateless_layers_config:
            self.final_stateless_layers = [
                TransformerLayer(config, kind, False) for kind in config.final_stateless_layers_config
            ]
        if config.use_head_norm:
            norm = rms_norm if config.head_norm_type == "rms_norm" else layer_norm
            self.head_norm = norm(config.embed_dim)
        self.head = nn.Linear(config.embed_dim, config.vocab_size, bias=True)
        self._compiled_step = None
        self._warmed_up = False

    def all_layers(self) -> list[TransformerLayer]:
        """Every layer in execution order (the order of :meth:`make_cache`)."""
        return self.get("stateless_layers", []) + self.layers + self.get("final_stateless_layers", [])

    def make_cache(self) -> list[KVCache]:
        """One self-attention KV cache per layer, stateless layers included."""
        return [KVCache() for _ in self.all_layers()]

    def project_memory(self, stm: mx.array) -> MemoryKV:
        """Cross-attention keys/values of every stateful layer from the STM (L, B, S, D).

        Compute it once per turn and pass it as ``memory=`` to every decoder call of that turn.
        """
        stm = stm.astype(self.head.bias.dtype)
        return [layer.project_memory(stm[index]) for index, layer in enumerate(self.layers)]

    def __call__(
        self,
        ids: mx.array,
        stm: mx.array | None = None,
        *,
        cache: list[KVCache] | None = None,
        memory: MemoryKV | None = None,
    ) -> mx.array:
        """Logits (B, T, V) of ``ids`` (B, T) given the STM (or its projection ``memory``).

        With ``cache`` (from :meth:`make_cache`), ``ids`` continue the cached sequence: their
        positions start at the cache offset, and their keys/values are appended to it.
        """
        if memory is None:
            if stm is None:
                raise ValueError("decoder needs the STM (stm=...) or its projection (memory=...)")
            memory = self.project_memory(stm)
        if len(memory) != len(self.layers):
            raise ValueError(f"memory has {len(memory)} layers, the decoder has {len(self.layers)} stateful layers")
        if cache is not None and ids.shape[1] == 1 and cache[0].capacity:
            return self._compiled_one_token(ids, cache, memory)
        return self._forward(ids, memory, cache)

    def _forward(self, ids: mx.array, memory: MemoryKV, cache: list[KVCache] | None) -> mx.array:
        layers = self.all_layers()
        caches = cache if cache is not None else [None] * len(layers)
        offset = cache[0].offset if cache is not None else 0
        mask = "causal" if ids.shape[1] > 1 else None
        stateful = iter(memory)
        x = self.embedding(ids)
        positions = shared_positions(layers, offset, ids.shape[1], x.dtype)
        for layer, layer_cache in zip(layers, caches, strict=True):
            layer_memory = next(stateful) if "memory_cross_attention" in layer else None
            x = layer(x, mask=mask, memory=layer_memory, cache=layer_cache, offset=positions)
        if "head_norm" in self:
            x = self.head_norm(x)
        return linear_rows(x, self.head)

    def _compiled_one_token(self, ids: mx.array, cache: list[KVCache], memory: MemoryKV) -> mx.array:
        """:meth:`_forward` of one token per row, compiled: the caches' buffers and offset go in
        as arrays, so the traced graph does not depend on the position."""
        offset = cache[0].offset
        for layer_cache in cache:
            layer_cache.reserve(1)
        if self._compiled_step is None:
            self._compiled_step = mx.compile(self._one_token, inputs=self)
        buffers = [(layer_cache.keys, layer_cache.values) for layer_cache in cache]
        logits, buffers = self._compiled_step(ids, mx.array(offset, dtype=mx.int32), buffers, memory)
        for layer_cache, (keys, values) in zip(cache, buffers, strict=True):
            layer_cache.keys, layer_cache.values, layer_cache.offset = keys, values, offset + 1
        return logits

    def _one_token(self, ids, offset, buffers, memory):
        cache = [KVCache.at(keys, values, offset) for keys, values in buffers]
        logits = self._forward(ids, memory, cache)
        return logits, [(layer_cache.keys, layer_cache.values) for layer_cache in cache]

    def warm_up(self, slots: int | None = None) -> None:
        """Run the compiled one-token call once (on a dummy STM), so that the first answer does
        not pay its tracing (~20 ms) or, on a machine where MLX has never built its CPU kernels
        for it (they are cached under ``$TMPDIR/mlx``), the one-time kernel compilation
        (seconds). ``slots``: the STM size the model will use (default: the decoder config's
        ``stm_size``). Idempotent."""
        if self._warmed_up:
            return
        dtype = self.head.bias.dtype
        slots = slots or self.config.stm_size
        stm = mx.zeros((len(self.layers), 1, slots, self.config.embed_dim), dtype=dtype)
        memory, cache = self.project_memory(stm), self.make_cache()
        ids = mx.zeros((1, 1), dtype=mx.int32)
        mx.eval(self(ids, cache=cache, memory=memory))  # fills the empty cache
        mx.eval(self(ids, cache=cache, memory=memory))  # the compiled call
        self._warmed_up = True


def shared_positions(layers: list[TransformerLayer], offset, length: int, dtype: mx.Dtype):
    """What the layers' attentions get as ``offset``: the RoPE tables of positions
    ``offset .. offset + length - 1``, computed once for all of them (bit-identical to rotating
    by ``offset`` in each attention), or ``offset`` itself when the layers use no RoPE."""
    rope = layers[0].attention.rope if layers else None
    return rope.tables(offset, length, dtype) if rope is not None else offset
