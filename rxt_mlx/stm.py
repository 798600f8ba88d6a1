"""The short-term memory (STM) as a file: one safetensors file, written atomically.

Layout: tensor ``stm`` of shape (L, 1, S, D) and string metadata ``format=rxt-stm``,
``format_version``, ``model_fingerprint``, ``turn``, ``dtype``, ``shape``, ``checksum``
(sha256 of the tensor bytes, so flipped bytes are caught) and ISO ``created``/``updated``.

Loading checks everything before returning and raises an :class:`STMFileError` subclass naming
the reason; nothing is returned (and the caller's state is untouched) on refusal.

Saving writes a temp file ``.<name>.<random>.tmp`` beside the target and renames it into place.
While it does, the saver holds a shared lock on the folder; :func:`remove_temp_files` removes the
temp files a killed saver left, and only when it can take that lock exclusively, so a save still
running in another process is never touched.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np

from rxt_mlx.errors import RxTError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so temp files are left for the user
    fcntl = None

FORMAT = "rxt-stm"
FORMAT_VERSION = "1"
TENSOR_NAME = "stm"
TEMP_SUFFIX = ".tmp"

_DTYPE_NAMES = {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16"}
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_ITEM_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2}
_RAW_VIEWS = {"float32": mx.uint32, "float16": mx.uint16, "bfloat16": mx.uint16}


class STMFileError(RxTError, ValueError):
    """An STM file cannot be used; the message names the file and the reason."""


class STMCorruptError(STMFileError):
    """Truncated file, unreadable header or tensor bytes that fail the checksum."""


class STMFormatError(STMFileError):
    """The file is not an rxt-stm file (another safetensors file, or no format metadata)."""


class STMVersionError(STMFileError):
    """The file was written in another STM format version."""


class STMModelMismatchError(STMFileError):
    """The file was written for another model (different fingerprint)."""


class STMShapeError(STMFileError):
    """The tensor's shape or dtype does not fit the model, or disagrees with the metadata."""


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dtype_name(dtype: mx.Dtype) -> str:
    """``"float32"``, ``"float16"`` or ``"bfloat16"``; other dtypes are not STM dtypes."""
    if dtype not in _DTYPE_NAMES:
        raise STMShapeError(f"STM dtype {dtype} is not a float type (expected float32, float16 or bfloat16)")
    return _DTYPE_NAMES[dtype]


def checksum(stm: mx.array) -> str:
    """``sha256:<hex>`` of the tensor's raw bytes (works for bfloat16, which numpy lacks)."""
    raw = np.asarray(stm.view(_RAW_VIEWS[dtype_name(stm.dtype)]))
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(raw).tobytes()).hexdigest()


def save_stm(
    path: str | Path,
    stm: mx.array,
    *,
    model_fingerprint: str,
    turn: int,
    created: str | None = None,
) -> dict[str, str]:
    """Write ``stm`` to ``path`` atomically.

    A temporary file in the same folder is written, flushed and fsynced, then renamed over
    ``path`` and the folder fsynced, so a crash leaves either the old file or the new one.

    Args:
        path: the target file.
        stm: the STM, shape (L, 1, S, D), a float dtype.
        model_fingerprint: ``model.fingerprint`` of the model that produced it.
        turn: number of completed turns the STM holds.
        created: ISO time the conversation's STM was first saved (default: now).

    Returns:
        the metadata written.
    """
    data, metadata = stm_file_bytes(path, stm, model_fingerprint=model_fingerprint, turn=turn, created=created)
    write_stm_file(path, data)
    return metadata


def stm_file_bytes(
    path: str | Path, stm: mx.array, *, model_fingerprint: str, turn: int, created: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The bytes :func:`save_stm` writes to ``path`` (named in errors) and their metadata.

    This part uses MLX (run it on the thread that owns the arrays); :func:`write_stm_file` then
    writes the bytes from any thread.
    """
    if stm.ndim != 4 or stm.shape[1] != 1:
        raise STMShapeError(f"STM to save has shape {tuple(stm.shape)}, expected (layers, 1, slots, dim)")
    if not model_fingerprint:
        raise STMFileError("cannot save an STM without a model fingerprint")
    if turn < 0:
        raise STMFileError(f"turn must be >= 0, got {turn}")
    mx.eval(stm)
    if not _finite(stm):
        raise STMFileError(f"{path}: refusing to save an STM holding NaN or infinite values (the model diverged)")
    stamp = now_iso()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_fingerprint": model_fingerprint,
        "turn": str(turn),
        "dtype": dtype_name(stm.dtype),
        "shape": json.dumps(list(stm.shape)),
        "checksum": checksum(stm),
        "created": created or stamp,
        "updated": stamp,
    }
    buffer = io.BytesIO()
    mx.save_safetensors(buffer, {TENSOR_NAME: stm}, metadata=metadata)
    return buffer.getvalue(), metadata


def write_stm_file(path: str | Path, data: bytes) -> None:
    """Write the bytes of :func:`stm_file_bytes` to ``path`` atomically (as :func:`save_stm`); no MLX."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with _saving_into(folder):
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=folder)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
    _fsync_folder(folder)


def remove_temp_files(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temp files that killed :func:`save_stm` calls left in ``folder``; returns them.

    Nothing is removed while a ``save_stm`` into ``folder`` runs in any process (each holds a shared
    lock on the folder while its temp file exists; this takes it exclusively, without waiting), nor
    where the folder cannot be locked.

    Args:
        folder: the folder of the STM files.
        name: only the temp files of the STM file ``name`` (default: of every STM file there).
    """
    folder = Path(folder)
    descriptor = _open_folder(folder)
    if descriptor is None:
        return []
    removed = []
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for path in folder.iterdir():
            target = temp_file_target(path.name)
            if target is not None and name in (None, target):
                path.unlink(missing_ok=True)
                removed.append(path)
    except OSError:  # a save is running (the lock is taken), or the folder went away
        pass
    finally:
        os.close(descriptor)
    return removed


def temp_file_target(file_name: str) -> str | None:
    """The STM file a :func:`save_stm` temp file ``.<name>.<random>.tmp`` was written for, or None."""
    if not (file_name.startswith(".") and file_name.endswith(TEMP_SUFFIX)):
        return None
    target, _, random_part = file_name[1 : -len(TEMP_SUFFIX)].rpartition(".")
    return target if target and random_part else None


@contextmanager
def _saving_into(folder: Path) -> Iterator[None]:
    """Hold a shared lock on ``folder`` (see :func:`remove_temp_files`); unlockable folders are saved into anyway."""
    descriptor = _open_folder(folder)
    try:
        if descriptor is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH)
            except OSError:
                pass
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _open_folder(folder: Path) -> int | None:
    """A descriptor of ``folder`` to lock, or None where folders cannot be opened or locked."""
    if fcntl is None:
        return None
    try:
        return os.open(folder, os.O_RDONLY)
    except OSError:
        return None


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some platforms (Windows); the rename is done
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load_stm(
    path: str | Path,
    *,
    model_fingerprint: str | None,
    expected_shape: tuple[int, ...] | None = None,
    expected_dtype: mx.Dtype | None = None,
) -> tuple[mx.array, dict[str, str]]:
    """Read and check an STM file.

    Args:
        path: the file.
        model_fingerprint: the current model's fingerprint; ``None`` skips this check.
        expected_shape: (L, 1, S, D) the model needs; ``None`` skips this check.
        expected_dtype: the dtype the model needs; ``None`` accepts any float dtype.

    Returns:
        ``(stm, metadata)``, the STM evaluated.

    Raises:
        STMCorruptError, STMFormatError, STMVersionError, STMModelMismatchError, STMShapeError.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise STMFileError(f"{path}: cannot read STM file ({error.strerror or error})") from None
    header = _read_header(path, data)
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise STMFormatError(f"{path}: not an rxt-stm file (metadata format is {metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise STMVersionError(
            f"{path}: STM format version {metadata.get('format_version')!r}, this version reads {FORMAT_VERSION!r}"
        )
    if model_fingerprint is not None and metadata.get("model_fingerprint") != model_fingerprint:
        raise STMModelMismatchError(
            f"{path}: STM was made by another model (fingerprint {metadata.get('model_fingerprint')!r}, "
            f"this model is {model_fingerprint!r})"
        )
    shape, dtype = _check_tensor_entry(path, header, metadata, expected_shape, expected_dtype)
    try:
        arrays = mx.load(io.BytesIO(data), format="safetensors")
        stm = arrays[TENSOR_NAME]
        mx.eval(stm)
    except (RuntimeError, ValueError, KeyError) as error:
        raise STMCorruptError(f"{path}: cannot read the STM tensor ({error})") from None
    if tuple(stm.shape) != shape or dtype_name(stm.dtype) != dtype:
        raise STMCorruptError(
            f"{path}: tensor read back as {tuple(stm.shape)} {stm.dtype}, header says {shape} {dtype}"
        )
    if checksum(stm) != metadata.get("checksum"):
        raise STMCorruptError(f"{path}: STM bytes do not match their checksum (the file is corrupt)")
    if not metadata.get("turn", "").isdigit():
        raise STMCorruptError(f"{path}: metadata turn {metadata.get('turn')!r} is not a non-negative integer")
    if not _finite(stm):
        raise STMCorruptError(f"{path}: STM holds NaN or infinite values; a model cannot answer from it")
    return stm, dict(metadata)


def _finite(stm: mx.array) -> bool:
    return bool(mx.all(mx.isfinite(stm)).item())


def _read_header(path: Path, data: bytes) -> dict:
    if len(data) < 8:
        raise STMCorruptError(f"{path}: truncated ({len(data)} bytes, not even a safetensors header length)")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > len(data) - 8:
        raise STMCorruptError(
            f"{path}: truncated or not safetensors (header of {header_size} bytes, file has {len(data)} bytes)"
        )
    try:
        header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise STMCorruptError(f"{path}: unreadable safetensors header ({error})") from None
    if not isinstance(header, dict):
        raise STMCorruptError(f"{path}: safetensors header is not a JSON object")
    body_size = len(data) - 8 - header_size
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise STMCorruptError(f"{path}: malformed header entry for tensor {name!r}")
        if offsets[1] > body_size:
            raise STMCorruptError(
                f"{path}: truncated (tensor {name!r} ends at byte {offsets[1]}, the data has {body_size} bytes)"
            )
    return header


def _check_tensor_entry(
    path: Path,
    header: dict,
    metadata: dict[str, str],
    expected_shape: tuple[int, ...] | None,
    expected_dtype: mx.Dtype | None,
) -> tuple[tuple[int, ...], str]:
    entry = header.get(TENSOR_NAME)
    if not isinstance(entry, dict):
        raise STMFormatError(f"{path}: no tensor named {TENSOR_NAME!r}")
    shape = tuple(entry.get("shape") or ())
    dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise STMShapeError(f"{path}: STM dtype {entry.get('dtype')!r} is not F32, F16 or BF16")
    if metadata.get("dtype") != dtype or metadata.get("shape") != json.dumps(list(shape)):
        raise STMShapeError(
            f"{path}: tensor is {shape} {dtype} but the metadata says {metadata.get('shape')} {metadata.get('dtype')}"
        )
    if len(shape) != 4 or shape[1] != 1:
        raise STMShapeError(f"{path}: STM shape {shape} is not (layers, 1, slots, dim)")
    if expected_shape is not None and shape != tuple(expected_shape):
        raise STMShapeError(f"{path}: STM shape {shape} does not fit this model, which needs {tuple(expected_shape)}")
    if expected_dtype is not None and dtype != dtype_name(expected_dtype):
        raise STMShapeError(
            f"{path}: STM dtype {dtype} does not fit this model, which needs {dtype_name(expected_dtype)}"
        )
    offsets = entry["data_offsets"]
    if offsets[1] - offsets[0] != int(np.prod(shape)) * _ITEM_SIZES[dtype]:
        raise STMCorruptError(f"{path}: tensor data is {offsets[1] - offsets[0]} bytes, shape {shape} needs more")
    return shape, dtype
