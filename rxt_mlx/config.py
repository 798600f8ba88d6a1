"""Configuration of an RxT model, read from rxlm-style ``config.json`` files.

Pure Python (no MLX import), so the PyTorch reference and the converter share it.
Field names and defaults follow the rxlm 0.3.80 constructor arguments; unknown keys are
ignored, features we do not implement are rejected with a :class:`ConfigError` naming the
setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rxt_mlx.errors import RxTError

FLOAT32_EPS = 1.1920928955078125e-07
"""RMSNorm eps used by rxlm (``nn.RMSNorm(eps=None)`` is ``finfo(float32).eps``)."""

ATTENTION_TYPES = ("mha", "gqa", "mqa", "sqa")
MEMORY_ATTENTION_VARIANTS = (
    "simple",
    "self",
    "interlayer",
    "self-interlayer",
    "grouped-self-interlayer",
)
FF_ACTIVATIONS = ("silu", "swish", "relu", "gelu", "sigmoid", "tanh", "linear")
RESIDUAL_GATE_TYPES = ("static", "elementwise", "linear")


class ConfigError(RxTError, ValueError):
    """A config value is missing, malformed or names a feature we do not support."""


@dataclass(frozen=True)
class AttentionShape:
    """Head layout of one attention module.

    ``query_heads`` and ``kv_heads`` are the projected head counts, ``out_heads`` the
    head count that reaches ``out_proj`` (and ``gate_proj``), ``head_dim`` is always
    ``embed_dim // att_heads``.
    """

    head_dim: int
    query_heads: int
    kv_heads: int

    @property
    def out_heads(self) -> int:
        return max(self.query_heads, self.kv_heads)


def attention_shape(
    att_type: str,
    embed_dim: int,
    att_heads: int,
    att_groups: int | None,
    att_query_groups: int | None,
    where: str,
) -> AttentionShape:
    """Head counts of an rxlm attention of type ``att_type`` (docs/architecture.md §Attention)."""
    if att_type not in ATTENTION_TYPES:
        raise ConfigError(
            f"{where}: attention type {att_type!r} is not supported "
            f"(expected one of {', '.join(ATTENTION_TYPES)}; linear/hybrid attention is not)"
        )
    if embed_dim % att_heads:
        raise ConfigError(f"{where}: embed_dim {embed_dim} is not divisible by att_heads {att_heads}")
    head_dim = embed_dim // att_heads
    if att_type == "mha":
        return AttentionShape(head_dim, att_heads, att_heads)
    if att_type == "mqa":
        return AttentionShape(head_dim, att_heads, 1)
    if att_groups is None:
        raise ConfigError(f"{where}: {att_type} attention needs att_groups")
    if att_type == "gqa":
        _check_divides(att_groups, att_heads, f"{where}: att_heads", "att_groups")
        return AttentionShape(head_dim, att_heads, att_groups)
    if att_query_groups is None:
        raise ConfigError(f"{where}: sqa attention needs att_query_groups (rxlm has no default)")
    high, low = max(att_query_groups, att_groups), min(att_query_groups, att_groups)
    _check_divides(low, high, f"{where}: max(att_query_groups, att_groups)", "the smaller one")
    return AttentionShape(head_dim, att_query_groups, att_groups)


def _check_divides(divisor: int, value: int, value_name: str, divisor_name: str) -> None:
    if divisor <= 0 or value % divisor:
        raise ConfigError(f"{value_name} ({value}) must be a positive multiple of {divisor_name} ({divisor})")


def _from_dict(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in values.items() if k in names}
    try:
        config = cls(**known)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None
    check_json_types(config, where)
    return config


_JSON_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": (
        "a finite number",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    ),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "list[str]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "dict[str, Any]": ("an object", lambda v: isinstance(v, dict)),
}


def check_json_types(config, where: str) -> None:
    """Every field holds the JSON type its annotation names (``X | None`` also allows null)."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        kind, _, optional = str(item.type).partition(" | ")
        if kind not in _JSON_TYPES or (value is None and optional == "None"):
            continue  # nested configs are checked by their own from_dict
        expected, valid = _JSON_TYPES[kind]
        if item.name in getattr(config, "POSITIVE_INTEGERS", ()):
            expected = "a positive integer"
        if not valid(value):
            raise ConfigError(f"{where}: {item.name} must be {expected}{' or null' if optional else ''}, got {value!r}")


class _ComponentConfig:
    """``from_dict`` / ``to_dict`` shared by the component configs (dataclasses)."""

    POSITIVE_INTEGERS: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str):
        config = _from_dict(cls, values, where)
        config.validate(where)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, where: str) -> None:
        for name in self.POSITIVE_INTEGERS:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")


@dataclass
class TransformerConfig(_ComponentConfig):
    """Decoder or encoder config (rxlm ``RxTDecoder`` / ``RxTEncoder`` kwargs)."""

    num_layers: int
    vocab_size: int
    embed_dim: int
    att_heads: int
    ff_dim: int = 0
    att_groups: int | None = None
    att_query_groups: int | None = None
    seq_len: int = 1024
    stm_size: int = 1024
    self_att_type: str = "sqa"
    cross_att_type: str | None = None
    cross_att_groups: int | None = None
    cross_att_query_groups: int | None = None
    use_gated: bool = True
    ff_activation: str = "silu"
    use_rms_norm: bool = True
    use_moe: bool = False
    num_experts: int = 1
    moe_top_k: int = 1
    num_shared_experts: int = 1
    shared_expert_dim: int | None = None
    moe_bias_mode: str = "global"
    moe_shared_experts_bias_mode: str = "local"
    moe_use_weighted_shared_experts: bool = False
    use_vectorized_moe: bool = True
    use_head_norm: bool = False
    head_norm_type: str = "layer_norm"
    use_gated_attention: bool = False
    use_gated_cross_attention: bool | None = None
    gated_attention_activation: str = "sigmoid"
    use_attention_output_bias: bool = True
    rope_base: float = 10000.0
    use_nope: bool = False
    stateless_layers_config: list[str] | None = None
    final_stateless_layers_config: list[str] | None = None
    dense_layer_dim: int | None = None
    skip_memory_cross_attention: bool = False
    attn_layer_types: list[str] | None = None

    POSITIVE_INTEGERS = ("num_layers", "vocab_size", "embed_dim", "att_heads", "seq_len", "stm_size")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> TransformerConfig:
        return super().from_dict(values, where)

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.attn_layer_types or self.self_att_type == "hybrid":
            raise ConfigError(f"{where}: hybrid/linear attention layers (attn_layer_types) are not supported")
        if self.ff_activation not in FF_ACTIVATIONS:
            raise ConfigError(f"{where}: ff_activation {self.ff_activation!r} is not one of {FF_ACTIVATIONS}")
        if self.gated_attention_activation not in FF_ACTIVATIONS:
            raise ConfigError(
                f"{where}: gated_attention_activation {self.gated_attention_activation!r} "
                f"is not one of {FF_ACTIVATIONS}"
            )
        if self.head_norm_type not in ("layer_norm", "rms_norm"):
            raise ConfigError(f"{where}: head_norm_type {self.head_norm_type!r} is not layer_norm or rms_norm")
        for layer_type in (self.stateless_layers_config or []) + (self.final_stateless_layers_config or []):
            if layer_type not in ("dense", "moe"):
                raise ConfigError(f"{where}: stateless layer type {layer_type!r} is not 'dense' or 'moe'")
        uses_moe = self.use_moe or "moe" in (self.stateless_layers_config or []) + (
            self.final_stateless_layers_config or []
        )
        if uses_moe:
            if not self.use_gated:
                raise ConfigError(f"{where}: MoE with use_gated=false is not supported")
            if not 1 <= self.moe_top_k <= self.num_experts:
                raise ConfigError(f"{where}: moe_top_k {self.moe_top_k} must be in 1..num_experts ({self.num_experts})")
            for name in ("moe_bias_mode", "moe_shared_experts_bias_mode"):
                if getattr(self, name) not in ("global", "local", "off"):
                    raise ConfigError(f"{where}: {name} {getattr(self, name)!r} is not global, local or off")
            if self.num_shared_experts < 0:
                raise ConfigError(f"{where}: num_shared_experts must be >= 0")
        if "dense" in (self.stateless_layers_config or []) + (self.final_stateless_layers_config or []):
            if not self.dense_layer_dim:
                raise ConfigError(f"{where}: 'dense' stateless layers need dense_layer_dim")
        if not self.ff_dim:
            raise ConfigError(f"{where}: ff_dim must be a positive integer")
        self.self_attention_shape(where)
        if self.has_memory_cross_attention:
            self.cross_attention_shape(where)

    @property
    def has_memory_cross_attention(self) -> bool:
        return not self.skip_memory_cross_attention

    @property
    def gated_cross_attention(self) -> bool:
        if self.use_gated_cross_attention is None:
            return self.use_gated_attention
        return self.use_gated_cross_attention

    @property
    def shared_dim(self) -> int:
        return self.shared_expert_dim or self.ff_dim

    def self_attention_shape(self, where: str = "config") -> AttentionShape:
        return attention_shape(
            self.self_att_type, self.embed_dim, self.att_heads, self.att_groups, self.att_query_groups, where
        )

    def cross_attention_shape(self, where: str = "config") -> AttentionShape:
        return attention_shape(
            self.cross_att_type or self.self_att_type,
            self.embed_dim,
            self.att_heads,
            self.cross_att_groups or self.att_groups,
            self.cross_att_query_groups or self.att_query_groups,
            where,
        )


@dataclass
class MemoryAttentionConfig(_ComponentConfig):
    """Memory-attention config (rxlm ``RxT*MemoryAttention`` kwargs)."""

    num_layers: int
    embed_dim: int
    att_heads: int
    stm_size: int = 1024
    seq_len: int = 1024
    att_type: str = "sqa"
    att_groups: int | None = None
    att_query_groups: int | None = None
    interlayer_att_type: str | None = None
    interlayer_att_groups: int | None = None
    interlayer_att_query_groups: int | None = None
    self_att_type: str | None = None
    self_att_groups: int | None = None
    self_att_query_groups: int | None = None
    rope_base: float = 10000.0
    use_nope: bool = False
    norm_type: str = "classic-rms"
    use_gated_residual: bool = False
    residual_gate_type: str = "static"
    residual_per_slot_gate: bool = False
    residual_gate_init: float = 3.0
    residual_gate_slot_status_type: str = "mean"
    use_tanh_residual_gate: bool = True
    use_gate_for_self_attention: bool = False
    disable_residual: bool = False
    num_groups: int | None = None
    att_experts: int | None = None
    interlayer_att_experts: int | None = None

    POSITIVE_INTEGERS = ("num_layers", "embed_dim", "att_heads", "stm_size", "seq_len")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "memory_attention_config") -> MemoryAttentionConfig:
        return super().from_dict(values, where)

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.norm_type != "classic-rms":
            raise ConfigError(f"{where}: memory norm_type {self.norm_type!r} is not supported (only 'classic-rms')")
        if self.residual_gate_type not in RESIDUAL_GATE_TYPES:
            raise ConfigError(
                f"{where}: residual_gate_type {self.residual_gate_type!r} is not one of {RESIDUAL_GATE_TYPES}"
            )
        if self.residual_gate_slot_status_type not in ("mean", "linear"):
            raise ConfigError(
                f"{where}: residual_gate_slot_status_type {self.residual_gate_slot_status_type!r} "
                "is not 'mean' or 'linear'"
            )
        if self.att_experts or self.interlayer_att_experts:
            raise ConfigError(f"{where}: mixture-of-experts attention (att_experts) is not supported")
        if self.num_groups is not None and (self.num_groups <= 0 or self.num_layers % self.num_groups):
            raise ConfigError(
                f"{where}: num_layers ({self.num_layers}) must be divisible by num_groups ({self.num_groups})"
            )
        self.main_attention_shape(where)
        self.interlayer_attention_shape(where)
        self.self_attention_shape(where)

    def main_attention_shape(self, where: str = "memory_attention_config") -> AttentionShape:
        return attention_shape(
            self.att_type, self.embed_dim, self.att_heads, self.att_groups, self.att_query_groups, where
        )

    def interlayer_attention_shape(self, where: str = "memory_attention_config") -> AttentionShape:
        return attention_shape(
            self.interlayer_att_type or self.att_type,
            self.embed_dim,
            self.att_heads,
            self.interlayer_att_groups or self.att_groups,
            self.interlayer_att_query_groups or self.att_query_groups,
            where,
        )

    def self_attention_shape(self, where: str = "memory_attention_config") -> AttentionShape:
        return attention_shape(
            self.self_att_type or self.att_type,
            self.embed_dim,
            self.att_heads,
            self.self_att_groups or self.att_groups,
            self.self_att_query_groups or self.att_query_groups,
            where,
        )


@dataclass
class TokenizerConfig(_ComponentConfig):
    """Special-token ids of the interaction template (rxlm ``tokenizer_config``)."""

    bos_token_id: int
    eos_token_id: int
    query_token_id: int
    answer_token_id: int
    pad_token_id: int = 0
    think_token_id: int | None = None
    tool_call_token_id: int | None = None
    tool_use_token_id: int | None = None
    internal_token_id: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "tokenizer_config") -> TokenizerConfig:
        for name in ("bos_token_id", "eos_token_id", "query_token_id", "answer_token_id"):
            if not isinstance(values, dict) or values.get(name) is None:
                raise ConfigError(f"{where}: missing {name}")
        return super().from_dict(values, where)


@dataclass
class RxTConfig:
    """A full RxT model: decoder, encoder, memory attention and the template ids."""

    decoder: TransformerConfig
    encoder: TransformerConfig
    memory_attention: MemoryAttentionConfig
    tokenizer: TokenizerConfig
    memory_attention_variant: str = "interlayer"
    system_prompt_title: str = "SYSTEM INSTRUCTIONS"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RxTConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"config.json: expected a JSON object, got {type(values).__name__}")
        for name in ("decoder_config", "encoder_config", "memory_attention_config", "tokenizer_config"):
            if not isinstance(values.get(name), dict):
                raise ConfigError(f"config.json: missing or malformed {name}")
        variant = values.get("memory_attention_variant") or "interlayer"
        memory_attention = MemoryAttentionConfig.from_dict(values["memory_attention_config"])
        config = cls(
            decoder=TransformerConfig.from_dict(values["decoder_config"], "decoder_config"),
            encoder=TransformerConfig.from_dict(values["encoder_config"], "encoder_config"),
            memory_attention=memory_attention,
            tokenizer=TokenizerConfig.from_dict(values["tokenizer_config"]),
            memory_attention_variant=variant,
            system_prompt_title=values.get("system_prompt_title") or "SYSTEM INSTRUCTIONS",
            extra={k: v for k, v in values.items() if k in ("format", "format_version", "quantization")},
        )
        check_json_types(config, "config.json")
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> RxTConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decoder_config": self.decoder.to_dict(),
            "encoder_config": self.encoder.to_dict(),
            "memory_attention_config": self.memory_attention.to_dict(),
            "tokenizer_config": self.tokenizer.to_dict(),
            "memory_attention_variant": self.memory_attention_variant,
            "system_prompt_title": self.system_prompt_title,
            **self.extra,
        }

    @property
    def num_memory_layers(self) -> int:
        return self.decoder.num_layers

    @property
    def stm_shape(self) -> tuple[int, int, int]:
        """(layers, slots, dim) of the STM, batch excluded."""
        return (self.decoder.num_layers, self.memory_attention.stm_size, self.decoder.embed_dim)

    def validate(self) -> None:
        if self.memory_attention_variant not in MEMORY_ATTENTION_VARIANTS:
            raise ConfigError(
                f"config.json: memory_attention_variant {self.memory_attention_variant!r} is not one of "
                f"{', '.join(MEMORY_ATTENTION_VARIANTS)}"
            )
        if self.memory_attention_variant == "grouped-self-interlayer" and not self.memory_attention.num_groups:
            raise ConfigError("memory_attention_config: grouped-self-interlayer needs num_groups")
        if self.decoder.skip_memory_cross_attention:
            raise ConfigError("decoder_config: skip_memory_cross_attention=true leaves no memory to read")
        dims = {
            "decoder_config.embed_dim": self.decoder.embed_dim,
            "encoder_config.embed_dim": self.encoder.embed_dim,
            "memory_attention_config.embed_dim": self.memory_attention.embed_dim,
        }
        if len(set(dims.values())) != 1:
            raise ConfigError(f"embed_dim differs between components: {dims}")
        layers = {
            "decoder_config.num_layers": self.decoder.num_layers,
            "encoder_config.num_layers": self.encoder.num_layers,
            "memory_attention_config.num_layers": self.memory_attention.num_layers,
        }
        if len(set(layers.values())) != 1:
            raise ConfigError(f"num_layers (stateful) differs between components: {layers}")
        if self.decoder.vocab_size != self.encoder.vocab_size:
            raise ConfigError(
                f"vocab_size differs: decoder {self.decoder.vocab_size}, encoder {self.encoder.vocab_size}"
            )
        if self.decoder.stm_size != self.memory_attention.stm_size:
            raise ConfigError(
                f"stm_size differs: decoder {self.decoder.stm_size}, memory attention {self.memory_attention.stm_size}"
            )
