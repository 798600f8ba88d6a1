"""The RxT decoder: stateless layers, stateful layers reading the STM, head.

Also defines :class:`TransformerLayer`, the pre-norm layer shared with the encoder.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache

from rxt_mlx.attention import Attention, Rope, RotaryTables
from rxt_mlx.config import AttentionShape, TransformerConfig
from rxt_mlx.feedforward import feed_forward
from rxt_mlx.layers import layer_norm, rms_norm, transformer_norm

MemoryKV = list[tuple[mx.array, mx.array]]

HEAD_BLOCK_MACS = 196_608  # rows x D of one head block in the single-token step (768 rows at D=256)
HEAD_MAX_BLOCKS = 16

CACHE_STEP = 64
"""KV-cache growth step of :meth:`Decoder.make_cache`: each new buffer size costs one trace of
the compiled step (~20 ms, once per process); the step attends over the whole buffer."""


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
        """Cross-attention keys/values of one STM layer (B, S, D); no RoPE on memory keys."""
        return self.memory_cross_attention.project_kv(self.stm_norm(stm_layer))

    def __call__(
        self,
        x: mx.array,
        *,
        mask: mx.array | str | None,
        memory: tuple[mx.array, mx.array] | None = None,
        cache=None,
        offset: int | mx.array | RotaryTables = 0,
    ) -> mx.array:
        x = x + self.attention(self.norm1(x), mask=mask, cache=cache, offset=offset)
        return self._memory_and_ff(x, memory, offset)

    def step(
        self,
        x: mx.array,
        keys: mx.array,
        values: mx.array,
        offset: mx.array,
        mask: mx.array,
        memory: tuple[mx.array, mx.array] | None,
        rotary: RotaryTables | None = None,
    ) -> tuple[mx.array, mx.array, mx.array]:
        """One decode token over fixed-capacity KV buffers (see :meth:`Attention.step_into`)."""
        attended, keys, values = self.attention.step_into(self.norm1(x), keys, values, offset, mask, rotary)
        return self._memory_and_ff(x + attended, memory, offset if rotary is None else rotary), keys, values

    def _memory_and_ff(self, x: mx.array, memory: tuple[mx.array, mx.array] | None, offset) -> mx.array:
        if memory is not None:
            x = x + self.memory_cross_attention(self.norm2(x), kv=memory, offset=offset)
        return x + self.ff(self.norm3(x))


class Decoder(nn.Module):
    """Causal decoder: embedding, stateless layers, stateful layers, final stateless layers, head."""

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
        """One self-attention KV cache per layer, stateless layers included.

        The caches grow their buffers :data:`CACHE_STEP` positions at a time (mlx-lm: 256):
        :meth:`step` attends over the whole buffer, so a smaller step wastes less work.
        """
        caches = [KVCache() for _ in self.all_layers()]
        for cache in caches:
            cache.step = CACHE_STEP
        return caches

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
        positions start at the cache offset.
        """
        if memory is None:
            if stm is None:
                raise ValueError("decoder needs the STM (stm=...) or its projection (memory=...)")
            memory = self.project_memory(stm)
        if len(memory) != len(self.layers):
            raise ValueError(f"memory has {len(memory)} layers, the decoder has {len(self.layers)} stateful layers")
        if ids.shape[1] == 1 and cache is not None and all(_steppable(layer_cache) for layer_cache in cache):
            return self.step(ids, cache, memory)
        layers = self.all_layers()
        caches = cache if cache is not None else [None] * len(layers)
        offset = caches[0].offset if cache is not None else 0
        mask = "causal" if ids.shape[1] > 1 else None
        stateful = iter(memory)
        x = self.embedding(ids)
        positions = shared_positions(layers, offset, ids.shape[1], x.dtype)
        for layer, layer_cache in zip(layers, caches, strict=True):
            layer_memory = next(stateful) if "memory_cross_attention" in layer else None
            x = layer(x, mask=mask, memory=layer_memory, cache=layer_cache, offset=positions)
        return self._head(x)

    def _head(self, x: mx.array) -> mx.array:
        if "head_norm" in self:
            x = self.head_norm(x)
        return self.head(x)

    def step(self, ids: mx.array, cache: list[KVCache], memory: MemoryKV) -> mx.array:
        """Logits (B, 1, V) of one new token per row ``ids`` (B, 1), appended to ``cache``.

        The same result as ``self(ids, cache=cache, memory=memory)`` (which calls this for a
        single token), through one compiled function: the caches' preallocated buffers
        (mlx-lm ``KVCache`` grows them 256 positions at a time) are attended whole with a mask
        of the filled positions, so the shapes do not change from token to token and the step
        is traced once per buffer size instead of rebuilding ~40 small ops per layer in Python.
        The module's arrays are live inputs (replaced or quantized weights are picked up); after
        swapping code without changing any array (say, an activation), set ``_compiled_step = None``.
        """
        if not all(_steppable(layer_cache) for layer_cache in cache):
            raise ValueError("Decoder.step needs mlx-lm KVCaches already filled by a prefill of the prompt")
        offset = cache[0].offset
        for layer_cache in cache:
            if layer_cache.keys.shape[2] <= offset:
                _grow(layer_cache, offset)
        if self._compiled_step is None:
            # the module itself is a live input: replaced or quantized weights are picked up
            self._compiled_step = mx.compile(self._buffer_step, inputs=self)
        logits, keys, values = self._compiled_step(
            ids,
            mx.array(offset, dtype=mx.int32),
            [layer_cache.keys for layer_cache in cache],
            [layer_cache.values for layer_cache in cache],
            memory,
        )
        for layer_cache, layer_keys, layer_values in zip(cache, keys, values, strict=True):
            layer_cache.keys, layer_cache.values = layer_keys, layer_values
            layer_cache.offset = offset + 1
        return logits

    def warm_up(self, slots: int | None = None) -> None:
        """Run the compiled step once (on a dummy STM), so that the first answer does not pay its
        tracing (~20 ms) or, on a machine where MLX has never built its CPU kernels for it (they
        are cached under ``$TMPDIR/mlx``), the one-time kernel compilation (seconds). ``slots``:
        the STM size the model will use (default: the decoder config's ``stm_size``). Idempotent."""
        if self._warmed_up:
            return
        dtype = self.head.bias.dtype
        slots = slots or self.config.stm_size
        stm = mx.zeros((len(self.layers), 1, slots, self.config.embed_dim), dtype=dtype)
        memory, cache = self.project_memory(stm), self.make_cache()
        ids = mx.zeros((1, 1), dtype=mx.int32)
        mx.eval(self(ids, cache=cache, memory=memory))
        mx.eval(self.step(ids, cache, memory))
        self._warmed_up = True

    def _buffer_step(self, ids, offset, keys, values, memory):
        mask = mx.arange(keys[0].shape[2]) <= offset
        stateful = iter(memory)
        x = self.embedding(ids)
        rotary = shared_positions(self.all_layers(), offset, 1, x.dtype)
        rotary = rotary if isinstance(rotary, RotaryTables) else None
        new_keys, new_values = [], []
        for layer, layer_keys, layer_values in zip(self.all_layers(), keys, values, strict=True):
            layer_memory = next(stateful) if "memory_cross_attention" in layer else None
            x, layer_keys, layer_values = layer.step(x, layer_keys, layer_values, offset, mask, layer_memory, rotary)
            new_keys.append(layer_keys)
            new_values.append(layer_values)
        return self._step_head(x), new_keys, new_values

    def _step_head(self, x: mx.array) -> mx.array:
        """The head of one token, in row blocks of the weight.

        OpenBLAS takes a much slower path for a one-row product above ~256k multiply-adds (a
        1x256 @ 256x4096 product: ~1 ms, against ~50 us per 768-row block here, with one BLAS
        thread or two); a few blocks cost little anywhere else. (Results match the single
        product to float rounding: ~2e-6 on logits of magnitude 4.)
        """
        head = self.head
        rows = max(64, HEAD_BLOCK_MACS // head.weight.shape[-1])
        vocab = head.weight.shape[0]
        if type(head) is not nn.Linear or vocab <= rows or vocab > rows * HEAD_MAX_BLOCKS:
            return self._head(x)
        if "head_norm" in self:
            x = self.head_norm(x)
        return mx.concatenate(
            [
                mx.addmm(head.bias[start : start + rows], x, head.weight[start : start + rows].T)
                for start in range(0, vocab, rows)
            ],
            axis=-1,
        )


def shared_positions(layers: list[TransformerLayer], offset, length: int, dtype: mx.Dtype):
    """What the layers' attentions get as ``offset``: the RoPE tables of positions
    ``offset .. offset + length - 1``, computed once for all of them (bit-identical to rotating
    by ``offset`` in each attention), or ``offset`` itself when the layers use no RoPE."""
    rope = layers[0].attention.rope if layers else None
    return rope.tables(offset, length, dtype) if rope is not None else offset


def _steppable(cache) -> bool:
    """Whether :meth:`Decoder.step` can use ``cache``: a plain mlx-lm KVCache already holding the prompt."""
    return type(cache) is KVCache and cache.keys is not None


def _grow(cache: KVCache, offset: int) -> None:
    """Give ``cache`` room for position ``offset`` (its own growth rule, without writing)."""
    extra = [*cache.keys.shape[:2], cache.step, cache.keys.shape[3]]
    cache.keys = mx.concatenate([cache.keys[..., :offset, :], mx.zeros(extra, cache.keys.dtype)], axis=2)
    extra[3] = cache.values.shape[3]
    cache.values = mx.concatenate([cache.values[..., :offset, :], mx.zeros(extra, cache.values.dtype)], axis=2)
