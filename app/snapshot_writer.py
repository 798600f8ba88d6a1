"""STM snapshots written on a thread of their own, so that the inference thread goes on decoding.

The inference thread turns a turn's STM into the bytes of its file
(:func:`rxt_mlx.stm.stm_file_bytes`: evaluated and converted there, so no MLX array crosses
threads); :class:`SnapshotWriter` writes them atomically (temp file, fsync, rename, fsync of
the folder, :func:`rxt_mlx.stm.write_stm_file`), one after another in the order given, and then
calls the write's ``saved`` callback: a turn is reported saved (and then committed) only once
its file is on disk. A write that fails calls ``failed`` with the error and its traceback.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rxt_mlx.stm import write_stm_file


@dataclass(frozen=True)
class _Write:
    path: Path
    data: bytes
    saved: Callable[[], object]
    failed: Callable[[BaseException, str], object]


_CLOSE = object()


class SnapshotWriter:
    """One thread writing snapshot files in order; see the module docstring."""

    def __init__(self):
        self._writes: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="rxt-snapshots", daemon=True)
        self._thread.start()

    def write(
        self,
        path: Path,
        data: bytes,
        saved: Callable[[], object],
        failed: Callable[[BaseException, str], object],
    ) -> None:
        """Write ``data`` to ``path`` atomically, then call ``saved`` (or ``failed``) on the writer's thread."""
        self._writes.put(_Write(Path(path), data, saved, failed))

    def wait(self) -> None:
        """Block until every write given so far is done and reported."""
        self._writes.join()

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the writes given so far, then end the thread."""
        if self._thread.is_alive():
            self._writes.put(_CLOSE)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            write = self._writes.get()
            try:
                if write is _CLOSE:
                    return
                try:
                    write_stm_file(write.path, write.data)
                except Exception as error:  # noqa: BLE001 - reported as the turn's failure
                    write.failed(error, traceback.format_exc())
                else:
                    write.saved()
            finally:
                self._writes.task_done()
