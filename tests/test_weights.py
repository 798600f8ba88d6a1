"""The weight-name map: rxlm full-model names <-> MLX parameter names (rxt_mlx.weights)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from rxt_convert.reference import RxTReference
from rxt_convert.reference.checkpoint import legacy_moe_state_dict

from rxt_mlx.model import RxT
from rxt_mlx.weights import BUFFERS, load_weights, sanitize, to_rxlm
from tests.factories import PARITY_CONFIGS, beta_config, random_mlx_model


@pytest.mark.parametrize("config_name", list(PARITY_CONFIGS))
def test_to_rxlm_gives_the_reference_state_dict_names_and_shapes(config_name):
    """The inverse map lands on exactly the tensors rxlm saves (buffers aside), shape for shape;
    configs with the legacy expert list go through the reference's own legacy rewrite."""
    config = PARITY_CONFIGS[config_name]()
    canonical = to_rxlm(dict(tree_flatten(random_mlx_model(config, seed=1).parameters())))
    if not config.decoder.use_vectorized_moe:
        canonical = legacy_moe_state_dict({name: torch.from_numpy(value) for name, value in canonical.items()})
    torch.manual_seed(0)
    reference = {
        name: tuple(tensor.shape)
        for name, tensor in RxTReference(config).state_dict().items()
        if not BUFFERS.search(name)
    }
    assert {name: tuple(value.shape) for name, value in canonical.items()} == reference


@pytest.mark.parametrize("config_name", list(PARITY_CONFIGS))
def test_sanitize_inverts_to_rxlm_exactly(config_name):
    weights = dict(tree_flatten(random_mlx_model(PARITY_CONFIGS[config_name](), seed=1).parameters()))
    canonical = to_rxlm(weights)
    canonical["decoder.model.layers.0.attention.rope.inv_freq"] = np.zeros(4, np.float32)
    canonical["memory_attention.model.stm.memory"] = np.zeros((2, 1, 8, 32), np.float32)
    sanitized = sanitize(canonical)
    assert sorted(sanitized) == sorted(weights)
    assert all(mx.array_equal(sanitized[name], weights[name]) for name in weights)
    assert sorted(sanitize(sanitized)) == sorted(weights)  # idempotent on MLX names


def test_to_rxlm_refuses_names_outside_the_components():
    with pytest.raises(KeyError, match="head.weight: expected a decoder./encoder./memory_attention."):
        to_rxlm({"head.weight": mx.zeros((2, 2))})


def test_fingerprint_of_freshly_sanitized_weights():
    """Transposed (non-contiguous) expert weights straight from sanitize hash like saved ones."""
    model = random_mlx_model(beta_config(), seed=9)
    rebuilt = RxT(beta_config())
    load_weights(rebuilt, sanitize(to_rxlm(dict(tree_flatten(model.parameters())))))
    assert rebuilt.fingerprint == model.fingerprint
