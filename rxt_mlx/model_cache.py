"""The cache of converted models: one rxt-mlx folder per Hub repo, commit and precision.

Lives in ``$RXT_MLX_CACHE/models``, else the platform's user cache dir (e.g.
``~/.cache/rxt-mlx/models``, ``~/Library/Caches/rxt-mlx/models``). An entry is named
``org--name--<commit[:12]>--<precision>`` (precision: ``auto`` for the checkpoint's own dtype, or
``float32``/``float16``/``bfloat16``, plus ``-q<bits>g<group>`` when quantized) and holds the model
folder and ``rxt-source.json`` (repo, revision, full commit, precision, when). It is built in a
``.NAME.<pid>.partial`` folder beside it and renamed into place, so an entry that exists is
complete; an interrupted build leaves only a partial folder, which is never used and is removed
once its process is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rxt_mlx.errors import RxTError

CACHE_ENV = "RXT_MLX_CACHE"
RECORD = "rxt-source.json"
PARTIAL = ".partial"
DELETING = ".deleting"


class CacheError(RxTError):
    """A cache entry cannot be found or removed; the message names it."""


def cache_root() -> Path:
    """The folder holding the converted models (``$RXT_MLX_CACHE/models`` or the user cache dir's)."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        from platformdirs import user_cache_dir

        base = user_cache_dir("rxt-mlx")
    return Path(base).expanduser() / "models"


@dataclass(frozen=True)
class CacheKey:
    """What one converted model is: a repo at a commit, in one precision."""

    repo: str
    commit: str
    dtype: str | None = None
    q_bits: int | None = None
    q_group_size: int | None = None

    @property
    def precision(self) -> str:
        quantized = f"-q{self.q_bits}g{self.q_group_size}" if self.q_bits else ""
        return (self.dtype or "auto") + quantized

    @property
    def name(self) -> str:
        return f"{repo_folder_name(self.repo)}--{self.commit[:12]}--{self.precision}"


def repo_folder_name(repo: str) -> str:
    return repo.replace("/", "--")


@dataclass(frozen=True)
class CachedModel:
    """One entry of the cache, as ``rxt-convert --list`` shows it."""

    folder: Path
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def size(self) -> int:
        return folder_size(self.folder)


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def read_record(folder: Path) -> dict[str, Any] | None:
    """The entry's ``rxt-source.json``, or None if ``folder`` is not a cache entry."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def lookup(key: CacheKey, root: Path | None = None) -> Path | None:
    """The cached folder of ``key``, or None if it has not been converted yet."""
    folder = (root or cache_root()) / key.name
    record = read_record(folder)
    return folder if record is not None and record.get("commit") == key.commit else None


def entries(root: Path | None = None) -> list[CachedModel]:
    """Every complete entry, by name; partial folders of running or dead conversions are skipped."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        record = None if folder.name.startswith(".") else read_record(folder)
        if record is not None:
            found.append(CachedModel(folder, record))
    return found


def newest(repo: str, precision: str, root: Path | None = None) -> CachedModel | None:
    """The most recently converted entry of ``repo`` in ``precision`` (to run offline), or None."""
    matching = [
        entry
        for entry in entries(root)
        if entry.record.get("repo") == repo and entry.record.get("precision") == precision
    ]
    return max(matching, key=lambda entry: entry.record.get("converted", 0), default=None)


def install(key: CacheKey, build: Callable[[Path], None], record: dict[str, Any], root: Path | None = None) -> Path:
    """Build the entry of ``key`` with ``build(folder)`` and move it into the cache in one rename.

    ``build`` must create ``folder``. If it raises, nothing is left behind. If another process
    installed the same entry meanwhile, that entry is kept and this build is discarded.
    """
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    target = root / key.name
    partial = root / f".{key.name}.{os.getpid()}{PARTIAL}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        folder = partial / "model"
        build(folder)
        values = {
            **record,
            "repo": key.repo,
            "commit": key.commit,
            "precision": key.precision,
            "converted": time.time(),
        }
        (folder / RECORD).write_text(json.dumps(values, indent=2) + "\n")
        _fsync_tree(folder)
        if target.exists() and lookup(key, root) is None:
            _remove(target)  # a stray folder of the same name that is not a complete entry
        try:
            os.replace(folder, target)
        except OSError:
            if lookup(key, root) is None:
                raise
        _fsync(root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def delete(name: str, root: Path | None = None) -> list[Path]:
    """Remove the entry called ``name``, or every entry of the repo ``name`` (``org/name``); returns them."""
    root = root or cache_root()
    matching = [entry.folder for entry in entries(root) if name in (entry.name, entry.record.get("repo"))]
    if not matching:
        raise CacheError(f"no cached model named {name!r} in {root} (rxt-convert --list shows the names)")
    for folder in matching:
        _remove(folder)
    return matching


def listing(root: Path | None = None) -> str:
    """The table ``rxt-convert --list`` prints: name, size and date of every cached model."""
    root = root or cache_root()
    found = entries(root)
    if not found:
        return f"no converted models cached in {root}"
    sizes = [entry.size for entry in found]
    width = max(len(entry.name) for entry in found)
    lines = [f"{'NAME':<{width}}  {'SIZE':>9}  CONVERTED"]
    for entry, size in zip(found, sizes, strict=True):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.record.get("converted", 0)))
        lines.append(f"{entry.name:<{width}}  {format_size(size):>9}  {when}")
    lines.append(f"{len(found)} model{'s' * (len(found) != 1)}, {format_size(sum(sizes))}, in {root}")
    return "\n".join(lines)


def format_size(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def remove_abandoned(root: Path) -> None:
    """Delete the partial (and half-deleted) folders whose process no longer runs."""
    for folder in root.glob(".*"):
        stem, dot, suffix = folder.name.rpartition(".")
        pid = stem.rsplit(".", 1)[-1]
        if dot + suffix in (PARTIAL, DELETING) and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(folder: Path) -> None:
    """Rename first, so a half-deleted entry never looks like a complete one."""
    doomed = folder.with_name(f".{folder.name}.{os.getpid()}{DELETING}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
