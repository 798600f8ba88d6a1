"""The full RxT model, and loading / saving / quantizing MLX model folders."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import SwitchLinear

from rxt_mlx.config import ConfigError, RxTConfig
from rxt_mlx.decoder import Decoder
from rxt_mlx.encoder import Encoder
from rxt_mlx.memory_attention import MemoryAttention
from rxt_mlx.weights import WeightError, load_weights, sanitize

FORMAT = "rxt-mlx"
FORMAT_VERSION = 1
QUANTIZATION_BITS = (2, 3, 4, 6, 8)
QUANTIZATION_GROUP_SIZES = (32, 64, 128)
# Routers, gates and norms stay in full precision (they are small and precision-sensitive).
_UNQUANTIZED_SUFFIXES = ("router.gate", "shared_expert_gate", ".gate", ".slot_status")


class RxT(nn.Module):
    """Reactive Transformer: decoder, encoder and memory attention sharing one embedding."""

    def __init__(self, config: RxTConfig):
        super().__init__()
        self.config = config
        self.decoder = Decoder(config.decoder)
        self.encoder = Encoder(config.encoder, embed=lambda ids: self.decoder.embedding(ids))
        self.memory_attention = MemoryAttention(config.memory_attention, config.memory_attention_variant)
        self._fingerprint: str | None = None

    @property
    def dtype(self) -> mx.Dtype:
        """Activation dtype: the dtype of the (never quantized) decoder head bias."""
        return self.decoder.head.bias.dtype

    @property
    def fingerprint(self) -> str:
        """sha256 of the config and every weight (names, dtypes, shapes, bytes); computed once.

        A saved and reloaded model has the fingerprint of the model it was saved from.
        """
        if self._fingerprint is None:
            values = self.config.to_dict()
            for key in ("format", "format_version"):
                values.pop(key, None)
            digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
            for name, value in sorted(tree_flatten(self.parameters()), key=lambda item: item[0]):
                digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
                value = mx.contiguous(value.view(mx.uint16) if value.dtype == mx.bfloat16 else value)
                digest.update(memoryview(value))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def initial_stm(self, batch: int = 1, seed: int = 0) -> mx.array:
        """A fresh STM (L, batch, S, D) drawn from N(0, 1), like rxlm's 'standard' init."""
        layers, slots, dim = self.config.stm_shape
        key = mx.random.key(seed)
        return mx.random.normal((layers, batch, slots, dim), key=key).astype(self.dtype)

    def update_memory(self, stm: mx.array, ids: mx.array, mask: mx.array | None = None) -> mx.array:
        """STM_t from STM_{t-1} and the whole interaction ``ids`` (B, T): encoder + memory attention."""
        return self.memory_attention(stm, self.encoder(ids, mask), mask)


def _quantizable(path: str, module: nn.Module, group_size: int) -> bool:
    if not isinstance(module, (nn.Linear, nn.Embedding, SwitchLinear)):
        return False
    if path.endswith(_UNQUANTIZED_SUFFIXES):
        return False
    return module.weight.shape[-1] % group_size == 0 and module.weight.shape[-2] >= 8


def quantize_model(model: RxT, bits: int, group_size: int) -> RxT:
    """Quantize ``model`` in place (Linear, Embedding and expert weights) and record it in the config.

    Norms, routers, shared-expert gates, residual gates, tiny layers (fewer than 8 outputs) and
    layers whose input width is not a multiple of ``group_size`` stay in full precision.
    """
    if "quantization" in model.config.extra:
        raise ValueError(f"model is already quantized ({model.config.extra['quantization']})")
    if bits not in QUANTIZATION_BITS:
        raise ValueError(f"quantization bits {bits} not supported (expected one of {QUANTIZATION_BITS})")
    if group_size not in QUANTIZATION_GROUP_SIZES:
        raise ValueError(f"quantization group size {group_size} not supported (expected {QUANTIZATION_GROUP_SIZES})")
    nn.quantize(model, group_size, bits, class_predicate=lambda path, m: _quantizable(path, m, group_size))
    extra = {**model.config.extra, "quantization": {"bits": bits, "group_size": group_size}}
    model.config = dataclasses.replace(model.config, extra=extra)
    model._fingerprint = None
    return model


def save_model(model: RxT, folder: str | Path) -> Path:
    """Write ``config.json`` (format rxt-mlx) and ``model.safetensors`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = model.config.to_dict()
    values.update(format=FORMAT, format_version=FORMAT_VERSION)
    (folder / "config.json").write_text(json.dumps(values, indent=2) + "\n")
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    return folder


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"{index}: malformed index ({error!r}); expected a 'weight_map' object") from None
        if not all(isinstance(name, str) and name and Path(name).name == name for name in files):
            raise ConfigError(f"{index}: 'weight_map' must map every weight to a file name in {folder}")
        return [folder / name for name in files]
    raise ConfigError(f"{folder}: no model.safetensors or model.safetensors.index.json; is it an rxt-mlx model folder?")


def _read_weights(files: list[Path]) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for file in files:
        try:
            loaded = mx.load(str(file))
        except (RuntimeError, ValueError, OSError) as error:
            reason = " ".join(str(error).split())
            raise WeightError(
                f"{file}: cannot read the weights ({reason}); the file is damaged or incomplete"
            ) from None
        if not isinstance(loaded, dict):
            raise WeightError(f"{file}: not a safetensors file of named weights")
        weights.update(loaded)
    return weights


def _read_config(folder: Path) -> RxTConfig:
    path = folder / "config.json"
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; is {folder} an rxt-mlx model folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror or error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of config values, got a JSON {type(values).__name__}")
    if values.get("format") != FORMAT:
        raise ConfigError(
            f'{path}: not an rxt-mlx model folder ("format" is {values.get("format")!r}, expected {FORMAT!r}); '
            "convert PyTorch/rxlm checkpoints first with: rxt-convert SRC OUT"
        )
    if values.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: format_version {values.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    return RxTConfig.from_dict(values)


def _quantization(config: RxTConfig, folder: Path) -> dict | None:
    quantization = config.extra.get("quantization")
    if quantization is None:
        return None
    if (
        not isinstance(quantization, dict)
        or quantization.get("bits") not in QUANTIZATION_BITS
        or quantization.get("group_size") not in QUANTIZATION_GROUP_SIZES
    ):
        raise ConfigError(
            f"{folder / 'config.json'}: 'quantization' is {quantization!r}; expected "
            f"{{'bits': one of {QUANTIZATION_BITS}, 'group_size': one of {QUANTIZATION_GROUP_SIZES}}}"
        )
    return quantization


def load_model(path: str | Path) -> RxT:
    """Load an rxt-mlx model folder (as written by rxt-convert or :func:`save_model`).

    Reads ``config.json`` and the weights (``model.safetensors`` or shards listed in
    ``model.safetensors.index.json``), re-applies the recorded quantization, loads the weights
    strictly and computes ``model.fingerprint``.
    """
    folder = Path(path)
    config = _read_config(folder)
    weights = sanitize(_read_weights(_weight_files(folder)))
    model = RxT(config)
    quantization = _quantization(config, folder)
    if quantization:
        nn.quantize(
            model,
            quantization["group_size"],
            quantization["bits"],
            class_predicate=lambda prefix, module: f"{prefix}.scales" in weights,
        )
    load_weights(model, weights)
    model.fingerprint  # noqa: B018 - hash while the weights are fresh in memory
    return model
