"""rxt_mlx.config: head layouts and the errors a bad config.json gets."""

import pytest

from rxt_mlx.config import ConfigError, MemoryAttentionConfig, RxTConfig, TransformerConfig, attention_shape
from tests.factories import beta_config


@pytest.mark.parametrize(
    ("att_type", "groups", "query_groups", "expected"),
    [
        ("mha", None, None, (8, 16, 16, 16)),
        ("gqa", 4, None, (8, 16, 4, 16)),
        ("mqa", None, None, (8, 16, 1, 16)),
        ("sqa", 4, 8, (8, 8, 4, 8)),
        ("sqa", 8, 8, (8, 8, 8, 8)),
        ("sqa", 8, 4, (8, 4, 8, 8)),
    ],
)
def test_attention_shapes(att_type, groups, query_groups, expected):
    shape = attention_shape(att_type, 128, 16, groups, query_groups, "test")
    assert (shape.head_dim, shape.query_heads, shape.kv_heads, shape.out_heads) == expected


@pytest.mark.parametrize(
    ("att_type", "groups", "query_groups", "message"),
    [
        ("linear", 4, 4, "attention type 'linear' is not supported"),
        ("sqa", 4, None, "sqa attention needs att_query_groups"),
        ("sqa", 3, 8, "must be a positive multiple"),
        ("gqa", 5, None, "att_heads \\(16\\) must be a positive multiple of att_groups \\(5\\)"),
    ],
)
def test_bad_attention_settings_are_named(att_type, groups, query_groups, message):
    with pytest.raises(ConfigError, match=message):
        attention_shape(att_type, 128, 16, groups, query_groups, "decoder_config")


def test_round_trip_through_dict():
    config = beta_config()
    assert RxTConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attn_layer_types": ["linear", "full"]}, "hybrid/linear attention"),
        ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
        ({"ff_activation": "mish"}, "ff_activation 'mish'"),
        ({"moe_top_k": 99}, "moe_top_k 99 must be in 1..num_experts"),
        ({"head_norm_type": "batch_norm"}, "head_norm_type 'batch_norm'"),
    ],
)
def test_unsupported_decoder_settings_are_named(change, message):
    values = beta_config().to_dict()
    values["decoder_config"].update(change)
    with pytest.raises(ConfigError, match=message):
        RxTConfig.from_dict(values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"norm_type": "adaptive"}, "memory norm_type 'adaptive' is not supported"),
        ({"residual_gate_type": "granular"}, "residual_gate_type 'granular'"),
        ({"num_groups": 3}, "must be divisible by num_groups \\(3\\)"),
        ({"att_experts": 4}, "mixture-of-experts attention"),
    ],
)
def test_unsupported_memory_attention_settings_are_named(change, message):
    values = beta_config().to_dict()
    values["memory_attention_config"].update(change)
    with pytest.raises(ConfigError, match=message):
        RxTConfig.from_dict(values)


def test_inconsistent_components_are_refused():
    values = beta_config().to_dict()
    values["encoder_config"]["num_layers"] += 1
    with pytest.raises(ConfigError, match="num_layers \\(stateful\\) differs"):
        RxTConfig.from_dict(values)
    values = beta_config().to_dict()
    del values["tokenizer_config"]
    with pytest.raises(ConfigError, match="missing or malformed tokenizer_config"):
        RxTConfig.from_dict(values)


def test_unknown_keys_are_ignored_and_defaults_follow_rxlm():
    decoder = TransformerConfig.from_dict(
        {
            "num_layers": 2,
            "vocab_size": 10,
            "embed_dim": 16,
            "att_heads": 4,
            "ff_dim": 32,
            "att_groups": 2,
            "att_query_groups": 2,
            "use_flash_attention": True,
            "some_future_flag": 1,
        }
    )
    assert decoder.rope_base == 10000.0 and decoder.use_attention_output_bias and decoder.num_shared_experts == 1
    memory = MemoryAttentionConfig.from_dict(
        {"num_layers": 2, "embed_dim": 16, "att_heads": 4, "att_groups": 2, "att_query_groups": 2}
    )
    assert memory.norm_type == "classic-rms" and memory.use_tanh_residual_gate
