"""Which processes have a data dir open: one lock file per writer, locked for as long as it lives.

``writers/<writer>.lock`` is created and locked (``flock``) when a :class:`~rxt_app.storage.Storage`
opens and removed when it closes. The operating system releases the lock of a process that dies,
even by ``kill -9``, so a lock file that another process can lock belongs to a writer that is gone,
and whatever that writer had not committed can be removed. Where files cannot be locked (Windows,
some network file systems) every writer counts as alive: its files are kept.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:
    fcntl = None

LOCK_SUFFIX = ".lock"


class WriterLock:
    """This writer's lock file in ``folder``; ``id`` names the writer in the database."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.id, self._descriptor = self._register()

    def _register(self) -> tuple[str, int]:
        while True:
            writer = uuid.uuid4().hex
            path = self.folder / f"{writer}{LOCK_SUFFIX}"
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _lock(descriptor)
                if os.path.samestat(os.fstat(descriptor), os.stat(path)):  # not swept away as a dead writer's
                    os.write(descriptor, f"{os.getpid()}\n".encode())
                    return writer, descriptor
            except (BlockingIOError, FileNotFoundError):  # another process is sweeping it: take another name
                pass
            os.close(descriptor)

    def is_alive(self, writer: str) -> bool:
        """Whether ``writer`` may still commit: it is this one, or its lock file is locked (or locks cannot tell)."""
        if writer == self.id:
            return True
        try:
            descriptor = os.open(self.folder / f"{writer}{LOCK_SUFFIX}", os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        try:
            if fcntl is None:
                return True
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(descriptor)

    def remove_dead(self) -> None:
        """Remove the lock files of writers that are gone."""
        for path in self.folder.iterdir():
            if path.name.endswith(LOCK_SUFFIX) and not self.is_alive(path.name.removesuffix(LOCK_SUFFIX)):
                path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove this writer's lock file and give up the lock (when its Storage closes)."""
        (self.folder / f"{self.id}{LOCK_SUFFIX}").unlink(missing_ok=True)
        os.close(self._descriptor)


def _lock(descriptor: int) -> None:
    """Lock a new lock file; BlockingIOError if another process holds it. A file system without
    locks is no error: its writers count as alive."""
    if fcntl is None:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError:
        pass
