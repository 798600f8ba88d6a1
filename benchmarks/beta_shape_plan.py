"""Shape plan of the published RxT-Beta (2.85B decoder) through the converter, without its memory.

Builds the PyTorch reference from the RxT-Beta config (docs/architecture.md §Published configs) on torch's meta device,
"saves" it key by key as rxlm's safetensors save does (tensors sharing storage are stored once,
under the alphabetically first name), canonicalizes and checks it like rxt-convert, sanitizes
it to MLX names with lazy placeholder arrays, and compares every key and shape with the MLX
``RxT`` built from the same config. Nothing is evaluated, so this takes seconds and little
memory although the model holds ~3 billion parameters.

Run: ``.venv/bin/python benchmarks/beta_shape_plan.py``
"""

from __future__ import annotations

import math
import resource
import sys
import time
from typing import Any

import mlx.core as mx
import torch
from mlx.utils import tree_flatten
from rxt_convert import canonical
from rxt_convert.sources import TensorInfo, TensorStore

from rxt_mlx.config import RxTConfig
from rxt_mlx.model import RxT
from rxt_mlx.weights import sanitize

PUBLISHED_PARAMETERS = {"decoder": 2_841_937_920, "encoder": 96_958_976, "memory_attention": 22_332_416}

_COMMON = {"embed_dim": 512, "att_heads": 16, "rope_base": 100000, "seq_len": 8192, "stm_size": 4096}

BETA_CONFIG: dict[str, Any] = {
    "decoder_config": {
        **_COMMON,
        "num_layers": 21,
        "vocab_size": 65536,
        "stateless_layers_config": ["dense", "moe"],
        "final_stateless_layers_config": ["moe", "moe"],
        "att_query_groups": 8,
        "att_groups": 4,
        "self_att_type": "sqa",
        "cross_att_type": "sqa",
        "use_gated_attention": True,
        "use_gated_cross_attention": False,
        "use_attention_output_bias": False,
        "use_flash_attention": True,
        "ff_dim": 192,
        "dense_layer_dim": 1536,
        "ff_activation": "silu",
        "ff_dropout": 0.0,
        "use_gated": True,
        "use_moe": True,
        "use_vectorized_moe": True,
        "num_experts": 384,
        "moe_top_k": 10,
        "num_shared_experts": 2,
        "shared_expert_dim": 384,
        "moe_bias_mode": "global",
        "moe_shared_experts_bias_mode": "global",
        "moe_use_weighted_shared_experts": False,
        "moe_grouped_gemm": True,
        "moe_use_cutlass_grouped_gemm": True,
        "router_amp": True,
        "router_dtype": "bfloat16",
        "use_head_norm": True,
        "head_norm_type": "rms_norm",
    },
    "encoder_config": {
        **_COMMON,
        "num_layers": 21,
        "vocab_size": 65536,
        "att_groups": 8,
        "att_query_groups": 8,
        "self_att_type": "sqa",
        "cross_att_type": "sqa",
        "ff_dim": 1536,
        "ff_activation": "silu",
        "use_gated": True,
        "use_gated_attention": True,
        "use_attention_output_bias": False,
        "skip_memory_cross_attention": True,
        "use_flash_attention": True,
    },
    "memory_attention_config": {
        **_COMMON,
        "num_layers": 21,
        "num_groups": 3,
        "att_type": "sqa",
        "att_groups": 8,
        "att_query_groups": 8,
        "interlayer_att_type": "sqa",
        "interlayer_att_groups": 8,
        "interlayer_att_query_groups": 8,
        "norm_type": "classic-rms",
        "use_gated_residual": True,
        "residual_gate_type": "elementwise",
        "residual_per_slot_gate": True,
        "residual_gate_init": 3.0,
        "residual_gate_slot_status_type": "mean",
        "use_tanh_residual_gate": False,
        "use_flash_attention": True,
    },
    # The published ids are unknown (docs/architecture.md §Published configs); any valid ids do for shapes.
    "tokenizer_config": {"bos_token_id": 2, "eos_token_id": 3, "query_token_id": 4, "answer_token_id": 5},
    "memory_attention_variant": "grouped-self-interlayer",
}


def beta_config() -> RxTConfig:
    return RxTConfig.from_dict(BETA_CONFIG)


def saved_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors rxlm's safetensors save keeps: one name per shared tensor, the alphabetically first."""
    state = model.state_dict(keep_vars=True)
    names_by_tensor: dict[int, list[str]] = {}
    for name, tensor in state.items():
        names_by_tensor.setdefault(id(tensor), []).append(name)
    return {min(names): state[names[0]] for names in names_by_tensor.values()}


def _unreadable(key: str):
    def load() -> torch.Tensor:
        raise RuntimeError(f"{key} lives on the meta device: the shape plan must not read data")

    return load


def max_rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def shape_plan(config: RxTConfig) -> dict[str, Any]:
    """Run the converter's plan on a meta-device reference of ``config`` and compare with MLX, lazily.

    Returns the reference parameter counts per component, the number of canonical and MLX keys,
    any differences (an empty ``problems`` list means every key and shape matches) and the MLX
    memory that building allocated (nothing is evaluated, so it stays near zero).
    """
    mlx_bytes_before = mx.get_active_memory()
    reference = canonical.meta_reference(config)
    counts = {
        name: sum(parameter.numel() for parameter in getattr(reference, name).parameters())
        for name in ("decoder", "encoder", "memory_attention")
    }
    saved = saved_tensors(reference)
    store = TensorStore()
    for key, tensor in saved.items():
        store.add(key, TensorInfo(tuple(tensor.shape), torch.bfloat16, "meta"), _unreadable(key))
    planned = canonical.plan(store)
    canonical.check(planned, canonical.expected_shapes(config))
    placeholders = {key: mx.zeros(entry.shape, dtype=mx.bfloat16) for key, entry in planned.items()}
    converted = {name: tuple(array.shape) for name, array in sanitize(placeholders).items()}
    model = RxT(config)
    wanted = {name: tuple(array.shape) for name, array in tree_flatten(model.parameters())}
    problems = [f"missing in converted weights: {name}" for name in sorted(set(wanted) - set(converted))]
    problems += [f"not an MLX parameter: {name}" for name in sorted(set(converted) - set(wanted))]
    problems += [
        f"{name}: MLX {list(wanted[name])}, converted {list(converted[name])}"
        for name in sorted(set(wanted) & set(converted))
        if wanted[name] != converted[name]
    ]
    return {
        "parameters": counts,
        "saved_tensors": len(saved),
        "canonical_keys": len(planned),
        "mlx_keys": len(wanted),
        "mlx_parameters": sum(math.prod(shape) for shape in wanted.values()),
        "problems": problems,
        "mlx_bytes_allocated": mx.get_active_memory() - mlx_bytes_before,
    }


def main() -> int:
    start, rss_before = time.perf_counter(), max_rss_mib()
    report = shape_plan(beta_config())
    seconds, rss_after = time.perf_counter() - start, max_rss_mib()
    for name, count in report["parameters"].items():
        published = PUBLISHED_PARAMETERS[name]
        verdict = "matches" if count == published else f"DIFFERS from {published:,}"
        print(f"{name:>17}: {count:>13,} parameters ({verdict} docs/architecture.md §Published configs)")
    print(f"saved tensors (deduplicated like rxlm): {report['saved_tensors']}")
    print(f"canonical keys: {report['canonical_keys']}; MLX parameters: {report['mlx_parameters']:,}")
    for problem in report["problems"]:
        print(f"  {problem}")
    if not report["problems"]:
        print(f"all {report['mlx_keys']} keys match")
    print(
        f"{seconds:.1f} s, MLX memory allocated {report['mlx_bytes_allocated'] / 2**20:.1f} MiB, "
        f"peak RSS {rss_after:.0f} MiB (was {rss_before:.0f} MiB before building)"
    )
    counts_ok = report["parameters"] == PUBLISHED_PARAMETERS
    return 0 if counts_ok and not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
