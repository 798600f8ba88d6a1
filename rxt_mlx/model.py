"""The full RxT model, and loading / saving / quantizing MLX model folders."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
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
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 << 30
"""Shard size of :func:`save_weights` (mlx-lm's 5 GiB): larger models are written in shards."""
_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5}|-\d{5}\.partial)?\.safetensors")
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


def save_model(model: RxT, folder: str | Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write ``config.json`` (format rxt-mlx) and the weights into ``folder``.

    The weights go to ``model.safetensors``, or to shards of at most ``max_shard_bytes`` with an
    index when they are larger (:func:`save_weights`).
    """
    folder = Path(folder)
    save_config(model.config, folder)
    save_weights(folder, tree_flatten(model.parameters()), max_shard_bytes)
    return folder


def save_config(config: RxTConfig, folder: Path) -> None:
    """Write ``config.json``: the full-model config plus the rxt-mlx format and version."""
    folder.mkdir(parents=True, exist_ok=True)
    values = config.to_dict()
    values.update(format=FORMAT, format_version=FORMAT_VERSION)
    (folder / "config.json").write_text(json.dumps(values, indent=2) + "\n")


def save_weights(
    folder: Path, weights: Iterable[tuple[str, mx.array]], max_shard_bytes: int = MAX_SHARD_BYTES
) -> list[Path]:
    """Write ``(name, array)`` pairs as ``model.safetensors``, or as shards with an index like mlx-lm.

    Each array is made contiguous and evaluated as it arrives, and a shard is written as soon as
    the next array would take it past ``max_shard_bytes``, so at most one shard is in memory
    (``weights`` may be a generator that converts one tensor at a time). One shard is
    ``model.safetensors``; several are ``model-0000k-of-0000N.safetensors`` listed in
    ``model.safetensors.index.json`` (``weight_map``, ``metadata.total_size``). Weight files of
    an earlier save in ``folder`` are removed first.

    Returns:
        the weight files written, in order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.name == INDEX_FILE or _WEIGHT_FILE.fullmatch(stale.name):
            stale.unlink()
    written: list[Path] = []
    shard: dict[str, mx.array] = {}
    shard_of: dict[str, int] = {}
    shard_bytes = total_bytes = 0

    def write_shard() -> None:
        path = folder / f"model-{len(written) + 1:05d}.partial.safetensors"
        mx.save_safetensors(str(path), shard, metadata={"format": "mlx"})
        written.append(path)
        shard.clear()
        mx.clear_cache()

    for name, array in weights:
        if name in shard_of:
            raise WeightError(f"weight {name!r} was given twice")
        array = mx.contiguous(array)
        mx.eval(array)
        if shard and shard_bytes + array.nbytes > max_shard_bytes:
            write_shard()
            shard_bytes = 0
        shard[name] = array
        shard_of[name] = len(written)
        shard_bytes += array.nbytes
        total_bytes += array.nbytes
    if shard or not written:
        write_shard()
    if len(written) == 1:
        return [written[0].rename(folder / SINGLE_FILE)]
    names = [f"model-{number:05d}-of-{len(written):05d}.safetensors" for number in range(1, len(written) + 1)]
    index = {
        "metadata": {"total_size": total_bytes},
        "weight_map": {name: names[shard_of[name]] for name in sorted(shard_of)},
    }
    files = [path.rename(folder / name) for path, name in zip(written, names, strict=True)]
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files


def quantized_weights(model: RxT, weights: Iterable[tuple[str, mx.array]]) -> Iterator[tuple[str, mx.array]]:
    """``weights`` (MLX names, full precision) as the quantized ``model`` stores them, one at a time.

    The weight of each module that :func:`quantize_model` quantized becomes its ``weight``,
    ``scales`` and ``biases`` (``mx.quantize`` with the module's bits and group size, as
    ``nn.quantize`` does); every other weight passes through. ``model`` may be a lazily built,
    never evaluated model: only its module types and settings are read.
    """
    modules = dict(model.named_modules())
    for name, value in weights:
        prefix, _, last = name.rpartition(".")
        module = modules.get(prefix)
        if last != "weight" or module is None or "scales" not in module:
            yield name, value
            continue
        weight, scales, biases = mx.quantize(value, module.group_size, module.bits, mode=module.mode)
        yield from ((name, weight), (f"{prefix}.scales", scales), (f"{prefix}.biases", biases))


def _weight_files(folder: Path) -> list[Path]:
    single = folder / SINGLE_FILE
    if single.exists():
        return [single]
    index = folder / INDEX_FILE
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
        repeated = sorted(set(loaded) & set(weights))
        if repeated:
            raise WeightError(f"{file}: weight(s) {', '.join(repeated[:5])} are also stored in another shard")
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
    strictly and computes ``model.fingerprint``. ``mx.load`` is lazy and ``RxT(config)``'s random
    init is replaced before anything is evaluated, so each weight is read once, straight into
    the model: loading needs about the folder's size in memory.
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
