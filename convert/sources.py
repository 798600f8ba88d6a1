"""Read RxT checkpoints (rxlm folders, per-component folders, our training checkpoints).

Every reader returns a :class:`Source`: a full-model rxlm-style config dict
(``decoder_config``, ``encoder_config``, ``memory_attention_config``, ``tokenizer_config``,
``memory_attention_variant``) and a :class:`TensorStore` holding the tensors under full-model
rxlm names (``decoder.model.*``, ``encoder.model.*``, ``memory_attention.model.*``). Tensors are
read lazily: shapes are known before any data is loaded, so a bad checkpoint is rejected
without reading gigabytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rxt_convert.reference.checkpoint import CheckpointError, detect_variant
from safetensors import safe_open

from rxt_mlx.errors import RxTError

COMPONENTS = ("decoder", "encoder", "memory_attention")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_MODEL_FILES = ("tokenizer.json", "tokenizer.model")
# rxlm's tokenizer_config key -> the special token it names (used to read ids from a tokenizer)
SPECIAL_TOKEN_NAMES = {
    "pad_token_id": "[PAD]",
    "bos_token_id": "[BOS]",
    "eos_token_id": "[EOS]",
    "query_token_id": "[Q]",
    "answer_token_id": "[A]",
    "think_token_id": "[T]",
    "tool_call_token_id": "[C]",
    "tool_use_token_id": "[U]",
    "internal_token_id": "[I]",
}
# Prefixes added by DDP (``module.``) and torch.compile (``_orig_mod.``) in training checkpoints.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class SourceError(RxTError, ValueError):
    """A checkpoint cannot be read: missing file, malformed config, unknown layout."""


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a stored tensor, known without loading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    origin: str


class TensorStore:
    """Lazily loaded tensors under full-model rxlm names."""

    def __init__(self) -> None:
        self._info: dict[str, TensorInfo] = {}
        self._loaders: dict[str, Callable[[], torch.Tensor]] = {}

    def add(self, key: str, info: TensorInfo, loader: Callable[[], torch.Tensor]) -> None:
        if key in self._info:
            raise SourceError(f"tensor {key!r} appears twice: in {self._info[key].origin} and in {info.origin}")
        self._info[key] = info
        self._loaders[key] = loader

    def __contains__(self, key: object) -> bool:
        return key in self._info

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __len__(self) -> int:
        return len(self._info)

    def info(self, key: str) -> TensorInfo:
        return self._info[key]

    def load(self, key: str) -> torch.Tensor:
        return self._loaders[key]()

    @property
    def nbytes(self) -> int:
        total = 0
        for info in self._info.values():
            count = 1
            for size in info.shape:
                count *= size
            total += count * info.dtype.itemsize
        return total


@dataclass
class Source:
    """A checkpoint read into a full-model config dict and a tensor store."""

    config: dict[str, Any]
    tensors: TensorStore
    tokenizer_dirs: list[Path] = field(default_factory=list)
    description: str = ""


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, with an error that names the file."""
    if not path.is_file():
        raise SourceError(f"{what}: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SourceError(f"{what}: {path} is not valid JSON ({error})") from None


def read_object(path: Path, what: str) -> dict[str, Any]:
    values = read_json(path, what)
    if not isinstance(values, dict):
        raise SourceError(f"{what}: {path} must hold a JSON object, got {type(values).__name__}")
    return values


def _add_safetensors(store: TensorStore, path: Path, prefix: str) -> None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise SourceError(f"{path}: not a readable safetensors file ({error})") from None
    for name, tensor_slice in slices.items():
        dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype())
        if dtype is None:
            raise SourceError(f"{path}: tensor {name!r} has unsupported dtype {tensor_slice.get_dtype()}")
        info = TensorInfo(tuple(tensor_slice.get_shape()), dtype, str(path))
        store.add(prefix + name, info, lambda name=name: _read_safetensor(path, name))


def _read_safetensor(path: Path, name: str) -> torch.Tensor:
    """One tensor of a safetensors file, mapped for this read only.

    safetensors maps the file; a handle kept open for the whole conversion would keep every page
    read so far resident (counted in the process's memory, as much as the checkpoint by the end).
    """
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _torch_load(path: Path) -> Any:
    """``torch.load`` memory-mapped (tensors are read when converted, not all at once); files in
    the legacy pre-zip ``torch.save`` format cannot be mapped and are read whole."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "zipfile" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors have many types; all mean "unreadable"
        reason = " ".join(str(error).split())
        raise SourceError(f"{path}: cannot be read by torch.load(weights_only=True) ({reason})") from None


def add_state_dict(store: TensorStore, state: Any, prefix: str, origin: str) -> None:
    """Add an in-memory state dict (tensors only) to ``store`` under ``prefix``."""
    if not isinstance(state, dict):
        raise SourceError(f"{origin}: expected a state dict (name -> tensor), got {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise SourceError(f"{origin}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
        info = TensorInfo(tuple(tensor.shape), tensor.dtype, origin)
        store.add(prefix + _strip_wrappers(name), info, lambda tensor=tensor: tensor)


def _strip_wrappers(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for wrapper in WRAPPER_PREFIXES:
            if name.startswith(wrapper):
                name, stripped = name[len(wrapper) :], True
    return name


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a save_pretrained folder: one file, or the shards of an index."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            weight_map = read_object(folder / index, "weights index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise SourceError(f"{folder / index}: missing or empty 'weight_map'")
            shards = sorted(set(weight_map.values()))
            missing = [shard for shard in shards if not (folder / shard).is_file()]
            if missing:
                raise SourceError(f"{folder / index}: shard file(s) missing: {', '.join(missing)}")
            return [folder / shard for shard in shards]
    raise SourceError(
        f"{folder}: no weights found (expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json)"
    )


def add_weight_files(store: TensorStore, folder: Path, prefix: str = "") -> None:
    """Add every tensor of a save_pretrained folder to ``store`` under ``prefix``."""
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            _add_safetensors(store, path, prefix)
        else:
            add_state_dict(store, _torch_load(path), prefix, str(path))


def read_full_folder(folder: Path) -> Source:
    """A full-model rxlm folder (``RxTAlpha``/``RxTBeta.save_pretrained`` or our ``save_rxlm``)."""
    config = read_object(folder / "config.json", "model config")
    if config.get("format") == "rxt-mlx":
        raise SourceError(f"{folder} is already an rxt-mlx model folder (load it with rxt_mlx.load)")
    store = TensorStore()
    add_weight_files(store, folder)
    return Source(config, store, [folder], f"rxlm model folder {folder}")


def read_component_folders(decoder: Path, encoder: Path, memory_attention: Path, variant: str | None = None) -> Source:
    """Three per-component save_pretrained folders (flat configs, ``model.*`` keys)."""
    store = TensorStore()
    configs: dict[str, dict[str, Any]] = {}
    for name, folder in zip(COMPONENTS, (decoder, encoder, memory_attention), strict=True):
        if not folder.is_dir():
            raise SourceError(f"--{name.replace('_', '-')}: {folder} is not a folder")
        configs[name] = read_object(folder / "config.json", f"{name} config")
        add_weight_files(store, folder, prefix=f"{name}.")
    if variant is None:
        variant = infer_variant(store, configs["memory_attention"])
    config = {
        "decoder_config": configs["decoder"],
        "encoder_config": configs["encoder"],
        "memory_attention_config": configs["memory_attention"],
        "memory_attention_variant": variant,
    }
    if isinstance(configs["decoder"].get("tokenizer_config"), dict):
        config["tokenizer_config"] = configs["decoder"]["tokenizer_config"]
    return Source(config, store, [decoder, encoder, memory_attention], "per-component folders")


def infer_variant(store: TensorStore, memory_attention_config: dict[str, Any]) -> str:
    """Tell the memory-attention variant from the component's weight names (docs/architecture.md §rxlm names)."""
    prefix = "memory_attention."
    names = [key[len(prefix) :] for key in store if key.startswith(prefix)]
    try:
        return detect_variant(names, memory_attention_config)
    except CheckpointError as error:
        raise SourceError(f"{error}: pass --variant interlayer or --variant self-interlayer") from None


def read_training_checkpoint(path: Path) -> Source:
    """Our ``rxt-train`` checkpoint: ``torch.save({"config": RxTConfig.to_dict(), "model": state_dict})``."""
    checkpoint = _torch_load(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise SourceError(f"{path}: not a training checkpoint (expected keys 'config' and 'model', got {keys})")
    config = checkpoint["config"]
    if not isinstance(config, dict):
        raise SourceError(f"{path}: 'config' must be a dict, got {type(config).__name__}")
    store = TensorStore()
    add_state_dict(store, checkpoint["model"], "", f"{path}['model']")
    return Source(config, store, [path.parent], f"training checkpoint {path}")


def read_source(
    source: Path | None,
    *,
    decoder: Path | None = None,
    encoder: Path | None = None,
    memory_attention: Path | None = None,
    variant: str | None = None,
) -> Source:
    """Read any supported checkpoint layout.

    ``source`` is a full-model folder, a folder holding ``decoder/``, ``encoder/`` and
    ``memory_attention/`` sub-folders, or a training checkpoint file; alternatively give the
    three component folders. ``variant`` overrides the memory-attention variant.
    """
    components = (decoder, encoder, memory_attention)
    if any(components):
        if source is not None:
            raise SourceError("give either SRC or --decoder/--encoder/--memory-attention, not both")
        if not all(components):
            missing = [f"--{n.replace('_', '-')}" for n, p in zip(COMPONENTS, components, strict=True) if p is None]
            raise SourceError(f"per-component conversion needs all three folders; missing {', '.join(missing)}")
        return read_component_folders(decoder, encoder, memory_attention, variant)
    if source is None:
        raise SourceError("no checkpoint given: pass SRC or --decoder/--encoder/--memory-attention")
    if source.is_file():
        result = read_training_checkpoint(source)
    elif not source.is_dir():
        raise SourceError(f"{source} does not exist")
    elif (source / "config.json").is_file():
        result = read_full_folder(source)
    elif all((source / name / "config.json").is_file() for name in COMPONENTS):
        result = read_component_folders(*(source / name for name in COMPONENTS), variant=variant)
        result.tokenizer_dirs.insert(0, source)
        return result
    else:
        raise SourceError(f"{source}: no config.json, and no decoder/, encoder/, memory_attention/ component folders")
    if variant is not None:
        result.config["memory_attention_variant"] = variant
    return result


def find_tokenizer(candidates: list[Path]) -> Path | None:
    """The first folder (or file) among ``candidates`` that holds a tokenizer model."""
    for candidate in candidates:
        if candidate.is_file() and candidate.name in TOKENIZER_MODEL_FILES:
            return candidate
        if candidate.is_dir() and any((candidate / name).is_file() for name in TOKENIZER_MODEL_FILES):
            return candidate
    return None


def tokenizer_files(location: Path) -> list[Path]:
    """The tokenizer files to copy from a tokenizer folder or file."""
    if location.is_file():
        siblings = [location.parent / name for name in TOKENIZER_FILES if name not in TOKENIZER_MODEL_FILES]
        return [location] + [path for path in siblings if path.is_file()]
    return [location / name for name in TOKENIZER_FILES if (location / name).is_file()]


def special_token_ids(location: Path) -> dict[str, int]:
    """rxlm ``tokenizer_config`` ids read from a tokenizer's special tokens ([BOS], [Q], ...)."""
    files = {path.name: path for path in tokenizer_files(location)}
    vocabulary: dict[str, int] = {}
    if "tokenizer.json" in files:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(files["tokenizer.json"]))
        vocabulary = {name: tokenizer.token_to_id(name) for name in SPECIAL_TOKEN_NAMES.values()}
    elif "tokenizer.model" in files:
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(files["tokenizer.model"]))
        unknown = processor.unk_id()
        for name in SPECIAL_TOKEN_NAMES.values():
            piece = processor.piece_to_id(name)
            vocabulary[name] = None if piece == unknown and name != "[UNK]" else piece
    return {key: vocabulary[name] for key, name in SPECIAL_TOKEN_NAMES.items() if vocabulary.get(name) is not None}
