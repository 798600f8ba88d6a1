"""Models by Hub repo id: downloaded with huggingface_hub, converted once, reused.

:func:`resolve_model` turns what a user names (``--model``, ``rxt_mlx.load``) into a local rxt-mlx
folder: a folder is used as it is; a repo that already holds an rxt-mlx folder (``"format":
"rxt-mlx"``) is used as downloaded; an rxlm (PyTorch) repo is converted once into the cache of
converted models (:mod:`rxt_mlx.model_cache`). The converter is found through the
``rxt_mlx.converters`` entry-point group, which ``rxt_convert`` registers, so this module never
imports the PyTorch side. Downloads use the user's token and Hugging Face cache settings, honour
``HF_HUB_OFFLINE``, show huggingface_hub's progress bars and resume after an interruption. Every
failure is a :class:`HubError` whose one-line message names the cause.
"""

from __future__ import annotations

import errno
import json
import re
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rxt_mlx import model_cache
from rxt_mlx.errors import RxTError

CONVERTERS = "rxt_mlx.converters"
"""Entry-point group of checkpoint converters; ``rxt_convert`` registers ``rxlm``."""
CONVERTER = "rxlm"
INSTALL_CONVERTER = "pip install 'rxt-mlx[convert]'"

COMPONENTS = ("decoder", "encoder", "memory_attention")
CONFIG_FILES = ["config.json", *(f"{name}/config.json" for name in COMPONENTS)]
TOKENIZER_FILES = ["*tokenizer.json", "*tokenizer.model", "*tokenizer_config.json", "*special_tokens_map.json"]
SAFETENSORS_FILES = ["*.safetensors", "*.safetensors.index.json"]
PYTORCH_FILES = ["*pytorch_model*.bin", "*pytorch_model.bin.index.json"]
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)

Log = Callable[[str], None]


class HubError(RxTError):
    """A model named by repo id cannot be downloaded or converted; the message says why, in one line."""


class HubUnreachable(HubError):
    """The Hub cannot be reached (offline, no network) and what is needed is not in the local cache."""


def is_repo_id(text: str) -> bool:
    """Whether ``text`` is spelled like a Hub model repo id, ``org/name``."""
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text and "--" not in text


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_model(
    model: str | Path,
    *,
    revision: str | None = None,
    dtype: str | None = None,
    q_bits: int | None = None,
    q_group_size: int = 64,
    progress: bool | None = None,
    log: Log = log_to_stderr,
) -> Path:
    """A local rxt-mlx model folder for ``model``: a folder, or a Hub repo id ``org/name``.

    Args:
        model: an rxt-mlx folder, or the id of a Hub repo holding an rxlm checkpoint or an
            rxt-mlx folder.
        revision: branch, tag or commit of the repo (default: ``main``).
        dtype: ``float32``, ``float16`` or ``bfloat16`` for the conversion (default: the
            checkpoint's own dtype).
        q_bits: quantize to 4 or 8 bits (default: no quantization), in groups of ``q_group_size``.
        progress: progress bars (default: huggingface_hub's and the converter's own choice).
        log: where the lines saying what happens (downloading, converting, loading) go.

    Returns:
        The folder: ``model`` itself, the downloaded snapshot, or the cache entry of the conversion.

    Raises:
        HubError: the repo does not exist, cannot be reached, is not an RxT model, or cannot be
            converted; the message says which.
    """
    path = Path(model).expanduser()
    if path.exists():
        if revision or dtype or q_bits:
            raise HubError(f"{model} is a local folder: revision, dtype and quantization apply to Hub repos")
        return path
    if not is_repo_id(str(model)):
        raise HubError(f"{model}: no such model folder, and not a Hub repo id (org/name)")
    _check_precision(dtype, q_bits, q_group_size)
    key = model_cache.CacheKey(str(model), "", dtype, q_bits, q_group_size if q_bits else None)
    return _resolve_repo(key, revision, progress, log)


def model_argument(value: str | Path | None) -> Path | None:
    """The folder for a command's ``--model`` value (None stays None).

    A Hub repo id that is not also a local path is downloaded and converted as
    :func:`resolve_model` does; any other value is returned as a path, for the command's own
    folder checks and messages.
    """
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists() or not is_repo_id(str(value)):
        return path
    return resolve_model(str(value))


def _check_precision(dtype: str | None, q_bits: int | None, q_group_size: int) -> None:
    from rxt_mlx.model import QUANTIZATION_GROUP_SIZES

    if dtype not in (None, "float32", "float16", "bfloat16"):
        raise HubError(f"dtype {dtype!r} is not supported (expected float32, float16 or bfloat16)")
    if q_bits not in (None, 4, 8):
        raise HubError(f"quantization to {q_bits} bits is not supported (expected 4 or 8)")
    if q_bits and q_group_size not in QUANTIZATION_GROUP_SIZES:
        raise HubError(f"quantization group size {q_group_size} is not supported (expected {QUANTIZATION_GROUP_SIZES})")


def _resolve_repo(key: model_cache.CacheKey, revision: str | None, progress: bool | None, log: Log) -> Path:
    repo = key.repo
    log(_checking(repo, revision))
    try:
        snapshot = download(repo, revision, CONFIG_FILES, progress)
    except HubUnreachable as error:
        cached = model_cache.newest(repo, key.precision) if revision is None else None
        if cached is None:
            raise
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(cached.record["converted"]))
        log(f"{error}; using the conversion cached on {when}: {cached.folder}")
        return cached.folder
    commit = snapshot.name
    label = f"{repo}@{commit[:7]}"
    if repo_kind(snapshot, repo) == "rxt-mlx":
        if key.dtype or key.q_bits:
            raise HubError(f"{repo} is already an rxt-mlx model, used as published: drop dtype and quantization")
        folder = fetch_files(repo, commit, progress, log)
        log(f"loading {label} from {folder}")
        return folder
    key = model_cache.CacheKey(repo, commit, key.dtype, key.q_bits, key.q_group_size)
    cached = model_cache.lookup(key)
    if cached is None:
        converter = find_converter(repo)
        source = fetch_files(repo, commit, progress, log)
        cached = _convert(key, converter, source, revision, progress, log)
    log(f"loading {label} ({key.precision}) from {cached}")
    return cached


def _convert(key: model_cache.CacheKey, converter, source: Path, revision, progress, log: Log) -> Path:
    label = f"{key.repo}@{key.commit[:7]}"
    root = model_cache.cache_root()
    log(f"converting {label} to rxt-mlx ({key.precision}) into {root}")

    def build(folder: Path) -> None:
        converter(
            source,
            folder,
            dtype=key.dtype,
            q_bits=key.q_bits,
            q_group_size=key.q_group_size or 64,
            progress=progress,
            log=log,
        )

    try:
        return model_cache.install(key, build, {"revision": revision or "main", "source": str(source)})
    except RxTError as error:
        raise HubError(f"cannot convert {label}: {error}") from None
    except OSError as error:
        if error.errno in _FULL_DISK:
            raise HubError(
                f"the disk is full: converting {label} into {root} ran out of space ({error.strerror}); "
                f"nothing was cached; free some space or set {model_cache.CACHE_ENV} to a folder on another disk"
            ) from None
        raise


def find_converter(repo: str) -> Callable[..., Any]:
    """The converter registered in :data:`CONVERTERS`; a :class:`HubError` with the remedy if it is missing."""
    found = [point for point in entry_points(group=CONVERTERS) if point.name == CONVERTER]
    need = f"{repo} holds a PyTorch (rxlm) checkpoint, which needs converting"
    if not found:
        raise HubError(f"{need}, and the converter is not installed: {INSTALL_CONVERTER}")
    try:
        return found[0].load()
    except ImportError as error:
        raise HubError(f"{need}, and the converter cannot be imported ({error}): {INSTALL_CONVERTER}") from None


def fetch_checkpoint(repo: str, revision: str | None = None, progress: bool | None = None, log: Log = log_to_stderr):
    """Download an RxT checkpoint repo (config, weights, tokenizer); returns its snapshot folder."""
    log(_checking(repo, revision))
    snapshot = download(repo, revision, CONFIG_FILES, progress)
    repo_kind(snapshot, repo)
    return fetch_files(repo, snapshot.name, progress, log)


def fetch_component(
    repo: str, role: str, revision: str | None = None, progress: bool | None = None, log: Log = log_to_stderr
) -> Path:
    """Download one component repo (``--decoder REPO`` ...): a flat rxlm component config and weights."""
    log(_checking(repo, revision))
    snapshot = download(repo, revision, ["config.json"], progress)
    config = _read_config(snapshot, repo)
    if "embed_dim" not in config or "num_layers" not in config:
        raise HubError(
            f"{repo} (--{role.replace('_', '-')}) is not an RxT component: its config.json has no embed_dim "
            f"and num_layers{_what_it_is(config)}"
        )
    return fetch_files(repo, snapshot.name, progress, log)


def fetch_tokenizer(repo: str, revision: str | None = None, progress: bool | None = None, log: Log = log_to_stderr):
    """Download the tokenizer files of a repo (``--tokenizer REPO``); returns the snapshot folder."""
    log(f"downloading the tokenizer of {repo}{_at(revision)}")
    folder = download(repo, revision, TOKENIZER_FILES, progress)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise _missing(repo, folder.name, "has no tokenizer.json or tokenizer.model")
    return folder


def fetch_files(repo: str, commit: str, progress: bool | None, log: Log) -> Path:
    """Download the config, weights and tokenizer of ``repo`` at ``commit`` (safetensors, else pytorch .bin)."""
    log(f"downloading {repo}@{commit[:7]}")
    try:
        folder = download(repo, commit, CONFIG_FILES + SAFETENSORS_FILES + TOKENIZER_FILES, progress)
        if not _has_weights(folder):
            folder = download(repo, commit, CONFIG_FILES + PYTORCH_FILES + TOKENIZER_FILES, progress)
    except HubUnreachable:
        raise _partly_cached(repo, commit) from None
    if not _has_weights(folder):
        raise _missing(repo, commit, f"has no weights ({', '.join(WEIGHT_FILES)})")
    return folder


def _has_weights(folder: Path) -> bool:
    folders = [folder / name for name in COMPONENTS] if (folder / "decoder").is_dir() else [folder]
    return all(any((part / name).is_file() for name in WEIGHT_FILES) for part in folders)


def _missing(repo: str, commit: str, what: str) -> HubError:
    """A file the repo lacks, or (offline) one the local cache lacks."""
    return _partly_cached(repo, commit) if _offline() else HubError(f"{repo}@{commit[:7]} {what}")


def _partly_cached(repo: str, commit: str) -> HubUnreachable:
    reason = "HF_HUB_OFFLINE is set; unset it" if _offline() else "the Hub cannot be reached; connect"
    return HubUnreachable(
        f"{repo}@{commit[:7]} is only partly in the local Hugging Face cache (an interrupted download?) and "
        f"{reason} to finish the download"
    )


def repo_kind(snapshot: Path, repo: str) -> str:
    """``"rxt-mlx"`` or ``"rxlm"`` from the downloaded config(s); a :class:`HubError` for anything else."""
    if not (snapshot / "config.json").is_file():
        if all((snapshot / name / "config.json").is_file() for name in COMPONENTS):
            return "rxlm"
        raise _missing(repo, snapshot.name, "has no config.json: it is not an RxT model repository")
    config = _read_config(snapshot, repo)
    if config.get("format") == "rxt-mlx":
        return "rxt-mlx"
    sections = ("decoder_config", "encoder_config", "memory_attention_config")
    if all(isinstance(config.get(name), dict) for name in sections):
        return "rxlm"
    raise HubError(
        f"{repo} is not an RxT model: its config.json has no decoder_config, encoder_config and "
        f"memory_attention_config{_what_it_is(config)}"
    )


def _read_config(snapshot: Path, repo: str) -> dict[str, Any]:
    path = snapshot / "config.json"
    if not path.is_file():
        raise _missing(repo, snapshot.name, "has no config.json: it is not an RxT model repository")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise HubError(f"{repo}: config.json is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise HubError(f"{repo}: config.json holds a JSON {type(config).__name__}, not an object")
    return config


def _what_it_is(config: dict[str, Any]) -> str:
    kind = [str(config[name]) for name in ("model_type",) if config.get(name)]
    kind += [str(name) for name in config.get("architectures") or [] if isinstance(name, str)]
    return f" (it describes {', '.join(kind)})" if kind else ""


def download(repo: str, revision: str | None, patterns: list[str], progress: bool | None = None) -> Path:
    """``snapshot_download`` of the files matching ``patterns``; huggingface_hub's errors become HubErrors."""
    from huggingface_hub import errors, snapshot_download

    where = f"{repo}{_at(revision)}"
    try:
        folder = snapshot_download(
            repo,
            revision=revision,
            allow_patterns=patterns,
            tqdm_class=_quiet_tqdm() if progress is False else None,
        )
    except errors.GatedRepoError:
        raise HubError(
            f"{repo} is gated: accept its conditions on https://huggingface.co/{repo} and log in "
            "(hf auth login, or set HF_TOKEN)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"{repo} is not a local folder, and no such model repository is on the Hugging Face Hub (if it is "
            "private, log in with hf auth login or set HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision!r} (no such branch, tag or commit)") from None
    except errors.LocalEntryNotFoundError as error:
        if type(error).__name__ == "IncompleteSnapshotError":
            raise HubUnreachable(
                f"the download of {where} was interrupted and the Hub cannot be reached to finish it; "
                "run again with a network connection to resume it"
            ) from None
        if _offline() or isinstance(error.__cause__, errors.OfflineModeIsEnabled):
            raise HubUnreachable(
                f"{where} is not a local folder, and not in the local Hugging Face cache; HF_HUB_OFFLINE is set, "
                "unset it to download"
            ) from None
        cause = error.__cause__ or error
        raise HubUnreachable(
            f"cannot reach the Hugging Face Hub to download {where} ({_one_line(cause)}), and it is not in the "
            "local cache; check the network connection"
        ) from None
    except errors.HfHubHTTPError as error:
        raise HubError(f"the Hugging Face Hub refused to send {where}: {_one_line(error)}") from None
    except errors.HTTPError as error:
        raise HubError(
            f"the download of {where} was interrupted ({_one_line(error)}); run the same command again to resume it"
        ) from None
    except errors.HFValidationError as error:
        raise HubError(f"{repo!r} is not a valid Hub repo id ({_one_line(error)})") from None
    except OSError as error:
        if error.errno in _FULL_DISK:
            raise HubError(
                f"the disk is full: downloading {where} into the Hugging Face cache ran out of space; free some "
                "space or point HF_HOME to another disk"
            ) from None
        raise HubError(f"the download of {where} failed: {_one_line(error)}") from None
    return Path(folder)


def _checking(repo: str, revision: str | None) -> str:
    where = "in the local Hugging Face cache (HF_HUB_OFFLINE)" if _offline() else "on the Hugging Face Hub"
    return f"looking up {repo}{_at(revision)} {where}"


def _at(revision: str | None) -> str:
    if revision and _COMMIT.fullmatch(revision):
        return f"@{revision[:7]}"
    return f" (revision {revision})" if revision else ""


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _quiet_tqdm():
    from tqdm.auto import tqdm

    class Quiet(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def source_label(folder: str | Path) -> str:
    """What a model folder is, for people: ``org/name@commit`` for a cached conversion or a Hub
    snapshot (with the precision of a conversion), else the folder path."""
    folder = Path(folder)
    record = model_cache.read_record(folder)
    if record and record.get("repo") and record.get("commit"):
        return f"{record['repo']}@{record['commit'][:7]} (converted, {record.get('precision', 'auto')})"
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return f"{parts[-3][len('models--') :].replace('--', '/', 1)}@{parts[-1][:7]}"
    return str(folder)
