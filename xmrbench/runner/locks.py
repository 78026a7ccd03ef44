"""Per-run locks: at most one live process computes a given (recipe, cell, seed).

A run's lock is an advisory ``fcntl.flock`` on ``<recipe>/.work/<run>.lock`` in the
store. The kernel drops the lock when its holder exits, however it exits (``kill -9``
included), so a lock that cannot be taken is held by a *live* process. The holder
writes ``pid@host`` into the file for messages.

The lock file is removed only once the run's result is in the store. A process that
opened the old file before the removal and locks it afterwards re-checks the store
under the lock, finds the result and skips the run; removing the file of an
unfinished run, by contrast, could let two processes lock two different files, so
that file stays. Locks need a filesystem with working ``flock`` (local disks, and
NFSv4 or Lustre/GPFS mounted with locking, for stores shared across machines).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from xmrbench.errors import StoreError


class RunLock:
    """An exclusive, non-reentrant lock on one run of the store."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, wait: bool = False, poll_s: float = 0.2, stop_requested: Callable[[], bool] | None = None) -> bool:
        """Take the lock; ``False`` if another live process holds it.

        With ``wait`` the call polls until the lock is free (every ``poll_s``
        seconds), or until ``stop_requested()`` turns true (then ``False``).
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this object")
        while True:
            if self._try_once():
                return True
            if not wait or (stop_requested is not None and stop_requested()):
                return False
            time.sleep(poll_s)

    def _try_once(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the run's lock file ({exc.strerror or exc})", where=str(self.path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise StoreError(f"cannot lock the run ({exc.strerror or exc})", where=str(self.path)) from None
        self._fd = fd
        try:  # who holds it, for the messages of the others; best effort (a full disk must not stop the run)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        return True

    def holder(self) -> str:
        """``pid@host`` of the process that holds (or last held) the lock, or ``"?"``."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return "?"
        return text or "?"

    def release(self, *, remove: bool = False) -> None:
        """Release the lock; ``remove`` deletes the file first (only once the run is stored)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if remove:
                try:
                    self.path.unlink()
                except OSError:
                    pass
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        if not self.acquire():
            raise StoreError(f"run is locked by another process ({self.holder()})", where=str(self.path))
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
