"""STM snapshots written on threads of their own, so that the inference thread goes on decoding.

The inference thread turns a turn's STM into the bytes of its file
(:func:`rxt_mlx.stm.stm_file_bytes`: evaluated and converted there, so no MLX array crosses
threads); :class:`SnapshotWriter` writes them atomically (temp file, fsync, rename, fsync of
the folder, :func:`rxt_mlx.stm.write_stm_file`) and then calls the write's ``saved`` callback: a
turn is reported saved (and then committed) only once its file is on disk. A write that fails
calls ``failed`` with the error and its traceback.

Snapshots of different conversations (folders) are written by several threads at once, so that
the answers that end together wait for one round of fsyncs rather than for each other's; the
snapshots of one folder are written by one thread, in the order given.
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
THREADS = 4


class SnapshotWriter:
    """``threads`` threads writing snapshot files, each folder's in order; see the module docstring."""

    def __init__(self, threads: int = THREADS):
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(writes,), name=f"rxt-snapshots-{index}", daemon=True)
            for index, writes in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    def write(
        self,
        path: Path,
        data: bytes,
        saved: Callable[[], object],
        failed: Callable[[BaseException, str], object],
    ) -> None:
        """Write ``data`` to ``path`` atomically, then call ``saved`` (or ``failed``) on a writer's thread."""
        path = Path(path)
        self._queues[hash(path.parent) % len(self._queues)].put(_Write(path, data, saved, failed))

    def wait(self) -> None:
        """Block until every write given so far is done and reported."""
        for writes in self._queues:
            writes.join()

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the writes given so far, then end the threads."""
        for writes, thread in zip(self._queues, self._threads, strict=True):
            if thread.is_alive():
                writes.put(_CLOSE)
        for thread in self._threads:
            thread.join(timeout)

    @staticmethod
    def _run(writes: queue.Queue) -> None:
        while True:
            write = writes.get()
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
                writes.task_done()
