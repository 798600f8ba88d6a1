"""Random-init RxT checkpoints at the published sizes, in rxlm's on-disk layout, written shard by shard.

Each model goes into ``OUT/<model>-<dtype>`` (default ``/tmp/rxt-real-size/rxt-beta-bf16``; never
into the repository):

* ``config.json``: the full-model config as rxlm writes it (``decoder_config``,
  ``encoder_config``, ``memory_attention_config``, ``tokenizer_config``,
  ``memory_attention_variant``, ``"tokenizer": null``);
* the weights as huggingface_hub's ``save_torch_state_dict`` writes them (its
  ``split_torch_state_dict_into_shards`` plans the shards): ``model-0000k-of-0000N.safetensors`` of
  at most ``--max-shard-size`` (default 5GB) with ``model.safetensors.index.json``, or one
  ``model.safetensors`` when the model fits one shard. Every tensor rxlm saves is there, the
  RoPE and STM buffers included, and tensors sharing storage once, under their alphabetically
  first name (rxlm's own ``save_pretrained`` writes the same tensors into a single file);
* a small byte-level BPE ``tokenizer.json`` with the RxT special tokens at the config's ids.

Nothing like the whole model is ever in memory: the names and shapes come from the PyTorch
reference built on torch's meta device, and each shard's tensors are generated straight in the
requested dtype (seeded per tensor name, so the values do not depend on the sharding) and
written before the next shard is made. Peak memory is about one shard.

Values: matrices, embeddings and expert weights N(0, 0.02), routers included (near-uniform
routing); norm weights 1; biases 0; memory-attention residual gates at the config's
``residual_gate_init`` (as rxlm initialises them); the saved STM N(0, 1) (rxlm's "standard"
init); RoPE tables computed from the config, as rxlm saves them.

Models (docs/architecture.md §Published configs):

* ``rxt-beta``: RxT-Beta as published (``benchmarks/beta_shape_plan.py``), 2.93B parameters.
* ``rxt-beta-micro``: published is only its encoder (RxT-Beta-Micro-Encoder-Base: D 256, 16
  layers, 16 heads, SQA 8/8, FFN 1024, STM 1024 slots). Chosen here: a decoder and memory
  attention with RxT-Beta's layout and flags at that width (stateless dense+MoE and final
  MoE+MoE layers, gated SQA 8/4 self-attention, MoE 128 experts of 128 top-8 plus 2 shared of
  256, dense layer 1024, 16 stateful layers; grouped self-interlayer memory attention in 4
  groups), Beta's vocabulary (65,536), context 8192 and RoPE base 1e5: 0.31B parameters.
* ``rxt-alpha-mini``: published (model cards): decoder D 256, 8 layers, 16 heads, SQA 8/8 self
  and cross, MoE 16 experts top-2 of SwiGLU 512, vocabulary 10k, STM 8 x 1024; encoder D 256, 8
  layers, SQA 8/8, SwiGLU 768. Chosen here: the RxT-Alpha generation's flags as rxlm had them
  (the legacy expert-list MoE layout with per-expert biases, attention output biases, no shared
  experts, encoder layers that keep cross-attention weights; interlayer memory attention with
  static per-slot tanh gates), context 1024, RoPE base 1e4: 0.07B parameters.

Run (needs the big-memory lock, shared with the other memory-heavy jobs of this machine):

    flock /tmp/rxt-bigmem.lock .venv/bin/python benchmarks/real_size/make_checkpoints.py \\
        [rxt-beta rxt-beta-micro rxt-alpha-mini] [--dtype bfloat16|float32] [--out /tmp/rxt-real-size]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rxt_convert import canonical  # noqa: E402
from rxt_convert.reference.layers import RotaryPositionalEmbedding  # noqa: E402

from benchmarks.beta_shape_plan import BETA_CONFIG, saved_tensors  # noqa: E402
from rxt_mlx.config import RxTConfig  # noqa: E402
from tests.tokenizer_factories import tokenizer_config, write_bpe_tokenizer  # noqa: E402

DEFAULT_OUT = Path("/tmp/rxt-real-size")
DTYPES = {"bfloat16": (torch.bfloat16, "bf16"), "float32": (torch.float32, "fp32")}
INIT_STD = 0.02

_MICRO = {"embed_dim": 256, "att_heads": 16, "rope_base": 100000, "seq_len": 8192, "stm_size": 1024}
BETA_MICRO_CONFIG: dict[str, Any] = {
    "decoder_config": {
        **BETA_CONFIG["decoder_config"],
        **_MICRO,
        "num_layers": 16,
        "ff_dim": 128,
        "dense_layer_dim": 1024,
        "num_experts": 128,
        "moe_top_k": 8,
        "shared_expert_dim": 256,
    },
    "encoder_config": {**BETA_CONFIG["encoder_config"], **_MICRO, "num_layers": 16, "ff_dim": 1024},
    "memory_attention_config": {**BETA_CONFIG["memory_attention_config"], **_MICRO, "num_layers": 16, "num_groups": 4},
    "tokenizer_config": tokenizer_config(),
    "memory_attention_variant": "grouped-self-interlayer",
}

_MINI = {"embed_dim": 256, "num_layers": 8, "att_heads": 16, "seq_len": 1024, "stm_size": 1024}
_ALPHA_ATTENTION = {"att_groups": 8, "att_query_groups": 8, "self_att_type": "sqa", "cross_att_type": "sqa"}
ALPHA_MINI_CONFIG: dict[str, Any] = {
    "decoder_config": {
        **_MINI,
        **_ALPHA_ATTENTION,
        "vocab_size": 10000,
        "ff_dim": 512,
        "use_gated": True,
        "ff_activation": "silu",
        "use_moe": True,
        "num_experts": 16,
        "moe_top_k": 2,
        "num_shared_experts": 0,
        "use_vectorized_moe": False,
        "moe_bias_mode": "local",
        "use_attention_output_bias": True,
    },
    "encoder_config": {
        **_MINI,
        **_ALPHA_ATTENTION,
        "vocab_size": 10000,
        "ff_dim": 768,
        "use_gated": True,
        "ff_activation": "silu",
        "num_shared_experts": 0,
        "use_attention_output_bias": True,
        "skip_memory_cross_attention": False,
    },
    "memory_attention_config": {
        **_MINI,
        "att_type": "sqa",
        "att_groups": 8,
        "att_query_groups": 8,
        "use_gated_residual": True,
        "residual_gate_type": "static",
        "residual_per_slot_gate": True,
        "use_tanh_residual_gate": True,
    },
    "tokenizer_config": tokenizer_config(internal=False),
    "memory_attention_variant": "interlayer",
}

MODELS = {"rxt-beta": BETA_CONFIG, "rxt-beta-micro": BETA_MICRO_CONFIG, "rxt-alpha-mini": ALPHA_MINI_CONFIG}

_GATE = re.compile(r"_gate_layers\.\d+\.gate(\.bias)?$")
_BIAS = re.compile(r"(bias|\.b1|\.b2|_b1|_b2)$")


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def initial_value(name: str, shape: tuple[int, ...], dtype: torch.dtype, config: RxTConfig, seed: int) -> torch.Tensor:
    """The value of the saved tensor ``name`` (see the module docstring), made directly in ``dtype``."""
    if name.endswith((".rope.inv_freq", ".rope.cache")):
        base = getattr(config, name.split(".", 1)[0]).rope_base
        rope = RotaryPositionalEmbedding(2 * shape[-1], shape[0] if name.endswith(".cache") else 1, base)
        return getattr(rope, name.rpartition(".")[2]).to(dtype)
    if name.endswith(".stm.memory"):
        return torch.randn(shape, generator=_generator(seed, name), dtype=dtype)
    if _GATE.search(name):
        return torch.full(shape, config.memory_attention.residual_gate_init, dtype=dtype)
    if _BIAS.search(name):
        return torch.zeros(shape, dtype=dtype)
    if name.endswith(".weight") and len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    return torch.randn(shape, generator=_generator(seed, name), dtype=dtype).mul_(INIT_STD)


def rxlm_config(values: dict[str, Any]) -> dict[str, Any]:
    """The full-model ``config.json`` rxlm writes: the constructor arguments, ``tokenizer`` unset."""
    return {**values, "tokenizer": None}


def write_checkpoint(
    values: dict[str, Any],
    folder: Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    max_shard_size: int | str = "5GB",
) -> dict[str, Any]:
    """Write a random-init rxlm checkpoint of the full-model config ``values`` into the new ``folder``.

    Returns:
        what was written: ``files`` (weight files in order), ``bytes`` (their size),
        ``tensors`` and ``parameters`` (of the saved tensors, buffers included).
    """
    config = RxTConfig.from_dict(values)
    saved = saved_tensors(canonical.meta_reference(config))
    meta = {name: torch.empty(tensor.shape, dtype=dtype, device="meta") for name, tensor in saved.items()}
    split = split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)
    folder.mkdir(parents=True)
    for filename, names in split.filename_to_tensors.items():
        shard = {name: initial_value(name, tuple(meta[name].shape), dtype, config, seed) for name in names}
        save_file(shard, folder / filename, metadata={"format": "pt"})
        del shard
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(rxlm_config(values), indent=2))
    write_bpe_tokenizer(folder)
    files = list(split.filename_to_tensors)
    return {
        "files": files,
        "bytes": sum((folder / name).stat().st_size for name in files),
        "tensors": len(meta),
        "parameters": sum(tensor.numel() for tensor in meta.values()),
    }


def checkpoint_folder(out: Path, model: str, dtype: str) -> Path:
    return out / f"{model}-{DTYPES[dtype][1]}"


def make(model: str, dtype: str, out: Path, *, seed: int = 0, max_shard_size: str = "5GB", overwrite: bool = False):
    """Write ``model``'s checkpoint unless it is already there; returns its folder."""
    folder = checkpoint_folder(out, model, dtype)
    if (folder / "config.json").is_file() and not overwrite:
        print(f"{folder}: already there (--overwrite to write it again)")
        return folder
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    start = time.perf_counter()
    report = write_checkpoint(MODELS[model], staging, dtype=DTYPES[dtype][0], seed=seed, max_shard_size=max_shard_size)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    print(
        f"{folder}: {report['parameters']:,} values in {report['tensors']} tensors, "
        f"{len(report['files'])} file(s), {report['bytes'] / 1e9:.2f} GB, {time.perf_counter() - start:.0f} s"
    )
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"parent folder (default {DEFAULT_OUT})")
    parser.add_argument("--max-shard-size", default="5GB", help="largest shard, as huggingface_hub takes it (5GB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="write checkpoints that are already there again")
    args = parser.parse_args(argv)
    if ROOT in args.out.resolve().parents or args.out.resolve() == ROOT:
        parser.error(f"--out {args.out} is inside the repository; checkpoints are never committed")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected any of {', '.join(MODELS)}")
    for model in args.models or MODELS:
        make(model, args.dtype, args.out, seed=args.seed, max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
