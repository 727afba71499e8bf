"""Liveness of owners on one host, by lock files instead of heartbeat deadlines.

Each owner holds an exclusive ``flock`` on a file in a shared directory for as
long as it lives. The kernel drops the lock the instant the process dies, even
by SIGKILL, so a lock that can be taken marks a dead owner at once: no
deadline to wait out, and no clock involved.

A file is created under a temporary name, locked, then renamed into place, so
a file with a final name is never seen unlocked while its owner lives. Names
are unique per holder (a sanitised prefix of the owner for people reading
the directory, plus random hex); the exact owner id is the file's content.
Two holders of one owner id are then two files, and the owner stays live
while either holds.

Everything here blocks on the filesystem: callers run it off the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import threading
import time
import weakref
from pathlib import Path

_SUFFIX = ".lock"
_TEMP_PREFIX = ".tmp-"
# A temporary file outlives its rename only if its creator died in between;
# any age well past a rename's duration marks one of those.
_STALE_TEMP = 60.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

_instances: weakref.WeakSet[OwnerLocks] = weakref.WeakSet()


def _forget_in_child() -> None:
    # A forked child shares the parent's open file descriptions, and with them
    # the locks: it would keep a dead parent's owners "alive". Closing the
    # child's copies leaves the parent's locks in place.
    for locks in list(_instances):
        locks._drop_after_fork()


os.register_at_fork(after_in_child=_forget_in_child)


class OwnerLocks:
    """The lock files of one store instance in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[str, tuple[int, Path]] = {}  # owner -> (fd, path)
        self._guard = threading.Lock()
        _instances.add(self)

    def hold(self, owner: str) -> None:
        """Make sure this instance holds a lock for ``owner`` (idempotent)."""
        with self._guard:
            held = self._held.get(owner)
            if held is not None:
                # Still linked: nothing to do. Removed by hand (or by a stray
                # cleaner): others would see the owner dead, so make a new one.
                if os.fstat(held[0]).st_nlink > 0:
                    return
                os.close(held[0])
                del self._held[owner]
            self.directory.mkdir(parents=True, exist_ok=True)
            self._held[owner] = self._create(owner)

    def _create(self, owner: str) -> tuple[int, Path]:
        safe = _UNSAFE.sub("_", owner)[:64] or "owner"
        final = self.directory / f"{safe}-{secrets.token_hex(8)}{_SUFFIX}"
        temp = self.directory / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, owner.encode())
            os.rename(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            os.close(fd)
            raise
        return fd, final

    def release(self, owner: str) -> None:
        """Stop holding ``owner``'s lock (the owner is dead unless held elsewhere)."""
        with self._guard:
            held = self._held.pop(owner, None)
            if held is not None:
                _discard(*held)

    def close(self) -> None:
        """Release every lock this instance holds."""
        with self._guard:
            for held in self._held.values():
                _discard(*held)
            self._held.clear()

    def live(self) -> set[str]:
        """Owners whose lock some process holds; removes the files of dead ones."""
        with self._guard:
            owners = set(self._held)
            own_paths = {path.name for _, path in self._held.values()}
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return owners
        for name in names:
            path = self.directory / name
            if name.startswith(_TEMP_PREFIX):
                _remove_stale_temp(path)
            elif name.endswith(_SUFFIX) and name not in own_paths:
                owner = _holder(path)
                if owner is not None:
                    owners.add(owner)
        return owners

    def _drop_after_fork(self) -> None:
        for fd, _ in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()
        self._guard = threading.Lock()  # may have been held by another thread at fork


def _discard(fd: int, path: Path) -> None:
    # Unlinked while still locked, so no cleaner ever sees it free and alive.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


def _holder(path: Path) -> str | None:
    """The owner in ``path`` if a process holds its lock; else removes the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # removed by another process meanwhile
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 65536).decode(errors="replace")
        # Free: its holder died. Removed while we hold the lock, unless another
        # cleaner got there first (then the name is gone, and stays gone: names
        # are never reused).
        if os.fstat(fd).st_nlink > 0:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return None
    finally:
        os.close(fd)


def _remove_stale_temp(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if time.time() - os.fstat(fd).st_mtime < _STALE_TEMP:
            return  # likely being renamed right now
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    finally:
        os.close(fd)
