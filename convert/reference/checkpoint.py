"""Write rxlm-style checkpoint folders and load reference models back.

``save_rxlm`` mimics rxlm's ``save_pretrained`` (``PyTorchModelHubMixin``): ``config.json`` holds
the constructor kwargs and ``model.safetensors`` is written by ``safetensors.torch.save_model``,
which stores tensors sharing storage once under their alphabetically first name
(docs/architecture.md §rxlm names):
the shared embedding as ``decoder.model.embedding.weight``, the shared STM as
``decoder.model.stm.memory``, RoPE buffers once per component.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from rxt_mlx.config import MemoryAttentionConfig, RxTConfig, TokenizerConfig, TransformerConfig
from rxt_mlx.errors import RxTError

from .model import RxTReference
from .transformer import ShortTermMemory

COMPONENTS = ("decoder", "encoder", "memory_attention")
DEFAULT_TOKENIZER = TokenizerConfig(bos_token_id=2, eos_token_id=3, query_token_id=4, answer_token_id=5)


class CheckpointError(RxTError, ValueError):
    """A checkpoint folder or file is missing, malformed or does not fit the model."""


def rxlm_config_dict(config: RxTConfig) -> dict[str, Any]:
    """The full-model ``config.json`` rxlm writes (ctor kwargs plus ``"tokenizer": null``)."""
    return {
        "decoder_config": config.decoder.to_dict(),
        "encoder_config": config.encoder.to_dict(),
        "memory_attention_config": config.memory_attention.to_dict(),
        "tokenizer_config": config.tokenizer.to_dict(),
        "memory_attention_variant": config.memory_attention_variant,
        "system_prompt_title": config.system_prompt_title,
        "tokenizer": None,
    }


def legacy_moe_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vectorized MoE keys (``ff.w1``...) rewritten into the pre-0.3.10 ModuleList layout.

    ``experts.{e}.fc1.linear.weight = w1[e].T``, ``experts.{e}.fc2.weight = w2[e].T``, biases
    from ``b1``/``b2`` (zeros in bias mode 'off'). A non-zero ``global_bias`` has no legacy
    equivalent and is refused.
    """
    out = {}
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        if not prefix.endswith(".ff") or name not in ("w1", "w2", "b1", "b2", "global_bias"):
            out[key] = value
            continue
        if name == "global_bias" and value.abs().max() > 0:
            raise CheckpointError(f"{key}: a non-zero global MoE bias cannot be written in the legacy layout")
        if name != "w1":
            continue
        w1, w2 = value, state[f"{prefix}.w2"]
        b1 = state.get(f"{prefix}.b1", w1.new_zeros(w1.shape[0], w1.shape[2]))
        b2 = state.get(f"{prefix}.b2", w2.new_zeros(w2.shape[0], w2.shape[2]))
        for expert in range(w1.shape[0]):
            base = f"{prefix}.experts.{expert}"
            out[f"{base}.fc1.linear.weight"] = w1[expert].T.contiguous()
            out[f"{base}.fc1.linear.bias"] = b1[expert].clone()
            out[f"{base}.fc2.weight"] = w2[expert].T.contiguous()
            out[f"{base}.fc2.bias"] = b2[expert].clone()
    return out


def _legacy_config(config: RxTConfig) -> RxTConfig:
    return dataclasses.replace(
        config,
        decoder=dataclasses.replace(config.decoder, use_vectorized_moe=False),
        encoder=dataclasses.replace(config.encoder, use_vectorized_moe=False),
    )


def _prepared(model: RxTReference, dtype, legacy_moe: bool, stm_batch: int | None) -> RxTReference:
    """A copy of ``model`` in the layout, dtype and STM batch to save (``model`` itself if unchanged)."""
    if legacy_moe and model.config.decoder.use_vectorized_moe:
        state = legacy_moe_state_dict(model.state_dict())
        prepared = RxTReference(_legacy_config(model.config))
        _resize_stm_like(prepared, state)
        prepared.load_state_dict(state)
    elif dtype is not None or stm_batch is not None:
        prepared = copy.deepcopy(model)
    else:
        return model
    if stm_batch is not None:
        prepared.set_stm_batch(stm_batch)
    if dtype is not None:
        prepared.to(dtype)
    return prepared


def _write_weights(module: nn.Module, folder: Path, file_format: str) -> None:
    if file_format == "safetensors":
        save_model(module, str(folder / "model.safetensors"))
    elif file_format == "bin":
        torch.save(module.state_dict(), folder / "pytorch_model.bin")
    else:
        raise ValueError(f"file_format must be 'safetensors' or 'bin', got {file_format!r}")


def save_rxlm(
    model: RxTReference,
    folder: str | Path,
    *,
    layout: str = "full",
    dtype: torch.dtype | None = None,
    file_format: str = "safetensors",
    legacy_moe: bool = False,
    stm_batch: int | None = None,
) -> Path:
    """Write ``model`` the way rxlm's ``save_pretrained`` does.

    Args:
        layout: ``"full"`` (one folder, ``decoder.model.*`` etc.) or ``"components"``
            (sub-folders ``decoder/``, ``encoder/``, ``memory_attention/`` with flat configs and
            ``model.*`` keys, like the per-component Hub repos).
        dtype: cast every tensor (parameters and buffers, e.g. ``torch.bfloat16``).
        file_format: ``"safetensors"`` (deduplicated shared tensors) or ``"bin"`` (torch.save
            of the full ``state_dict``).
        legacy_moe: write the MoE experts in the pre-0.3.10 ModuleList layout, with
            ``use_vectorized_moe: false`` in the config.
        stm_batch: batch size of the saved STM buffers (rxlm saves the current batch mode).

    Returns:
        The folder.
    """
    folder = Path(folder)
    prepared = _prepared(model, dtype, legacy_moe, stm_batch)
    config = prepared.config
    if layout == "full":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(rxlm_config_dict(config), indent=2))
        _write_weights(prepared, folder, file_format)
    elif layout == "components":
        memory_attention = config.memory_attention.to_dict()
        if config.memory_attention_variant != "grouped-self-interlayer":
            # the component classes other than the grouped one take no num_groups
            memory_attention["num_groups"] = None
        configs = {
            "decoder": config.decoder.to_dict(),
            "encoder": config.encoder.to_dict(),
            "memory_attention": memory_attention,
        }
        for name in COMPONENTS:
            sub = folder / name
            sub.mkdir(parents=True, exist_ok=True)
            (sub / "config.json").write_text(json.dumps(configs[name], indent=2))
            _write_weights(getattr(prepared, name), sub, file_format)
    else:
        raise ValueError(f"layout must be 'full' or 'components', got {layout!r}")
    return folder


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """``model.safetensors`` or ``pytorch_model.bin`` of a folder."""
    if (folder / "model.safetensors").exists():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")


def _resize_stm_like(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give ``module``'s STM buffers the batch size stored in ``state`` (under any alias)."""
    for name, stm in module.named_modules(remove_duplicate=False):
        key = f"{name}.memory" if name else "memory"
        if isinstance(stm, ShortTermMemory) and key in state and state[key].shape != stm.memory.shape:
            stm.resize(state[key].shape[1])


def load_state(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` strictly, except for keys that alias a loaded tensor (deduplicated on save).

    Raises:
        CheckpointError: naming unexpected keys, missing keys or shape mismatches.
    """
    _resize_stm_like(module, state)
    expected = module.state_dict()
    unexpected = sorted(set(state) - set(expected))
    storage: dict[int, set[str]] = {}
    for key, tensor in expected.items():
        storage.setdefault(tensor.untyped_storage().data_ptr(), set()).add(key)
    missing = sorted(
        key
        for key in set(expected) - set(state)
        if not storage[expected[key].untyped_storage().data_ptr()] & set(state)
    )
    mismatched = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    if unexpected or missing or mismatched:
        raise CheckpointError(
            f"{where}: weights do not fit the config: missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatches {mismatched[:10]}"
        )
    module.load_state_dict(state, strict=False)


def detect_variant(keys, config: dict[str, Any]) -> str:
    """Memory-attention variant of a component checkpoint from its ``model.*`` keys (docs/architecture.md §rxlm names).

    ``config`` is the component's config dict: ``num_groups`` marks the grouped variant, and an
    ungated checkpoint with interlayer weights is ambiguous (interlayer and self-interlayer then
    have the same weights), which raises :class:`CheckpointError` asking for the variant.
    """

    def has(part: str) -> bool:
        return any(key.startswith(f"model.{part}.") for key in keys)

    if has("mean_attention_layers"):
        if has("interlayer_gate_layers") or config.get("num_groups"):
            return "grouped-self-interlayer" if config.get("num_groups") else "self-interlayer"
        if config.get("use_gated_residual"):
            return "interlayer"
        raise CheckpointError(
            "memory attention: interlayer and self-interlayer have the same weights when "
            "use_gated_residual is false, so the variant must be given"
        )
    if has("self_attention_layers"):
        return "self"
    if has("attention_layers"):
        return "simple"
    raise CheckpointError("memory attention: no attention_layers weights found, cannot tell the variant")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


def load_reference(
    path: str | Path,
    *,
    tokenizer_config: TokenizerConfig | None = None,
    memory_attention_variant: str | None = None,
) -> RxTReference:
    """Load a reference model from a ``save_rxlm`` folder (either layout) or a training checkpoint.

    Args:
        path: a folder with ``config.json`` (full layout), a folder with ``decoder/``,
            ``encoder/`` and ``memory_attention/`` sub-folders, or a ``torch.save`` file
            ``{"config": RxTConfig.to_dict(), "model": state_dict, ...}``.
        tokenizer_config: template ids for the components layout (which has none);
            default [BOS]=2 [EOS]=3 [Q]=4 [A]=5.
        memory_attention_variant: overrides the variant detected from the keys (components).
    """
    path = Path(path)
    if path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "config" not in checkpoint or "model" not in checkpoint:
            raise CheckpointError(f"{path}: expected a dict with 'config' and 'model' (an rxt-train checkpoint)")
        model = RxTReference(RxTConfig.from_dict(checkpoint["config"]))
        load_state(model, checkpoint["model"], str(path))
        return model
    if (path / "config.json").exists():
        model = RxTReference(RxTConfig.from_dict(_read_json(path / "config.json")))
        load_state(model, read_state_dict(path), str(path))
        return model
    if all((path / name).is_dir() for name in COMPONENTS):
        states = {name: read_state_dict(path / name) for name in COMPONENTS}
        memory_values = _read_json(path / "memory_attention" / "config.json")
        memory_config = MemoryAttentionConfig.from_dict(memory_values)
        config = RxTConfig(
            decoder=TransformerConfig.from_dict(_read_json(path / "decoder" / "config.json"), "decoder/config.json"),
            encoder=TransformerConfig.from_dict(_read_json(path / "encoder" / "config.json"), "encoder/config.json"),
            memory_attention=memory_config,
            tokenizer=tokenizer_config or DEFAULT_TOKENIZER,
            memory_attention_variant=memory_attention_variant
            or detect_variant(states["memory_attention"], memory_values),
        )
        model = RxTReference(config)
        for name in COMPONENTS:
            load_state(getattr(model, name), states[name], str(path / name))
        return model
    raise CheckpointError(
        f"{path}: not a checkpoint (expected config.json, decoder/encoder/memory_attention sub-folders, or a file)"
    )
