"""Run folders: one writer each.

- A default folder (`runs/train-<date>-<time>`) is claimed with an atomic mkdir, with a suffix
  (-2, -3, ...) when another run took the name in the same second: two runs never share it.
- The writer holds an exclusive lock on `<run>/.lock` (flock on POSIX, msvcrt.locking on Windows)
  for as long as it runs: a second `train` on the same folder is refused with a message naming
  the process that holds it. The operating system releases the lock when the process dies, even
  by SIGKILL, so a killed run never leaves a stale lock behind (the file stays; the lock does not).
- Under the lock, temporary files that a killed writer left (`.<name>.<random>.tmp`, and the
  `.<name>.tmp.png` of older versions) are removed on start.
"""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from .checkpoint import TMP_SUFFIX
from .runtime import ConfigError

LOCK_NAME = ".lock"


def claim_default_dir(parent="runs", prefix="train") -> Path:
    """A new folder `<parent>/<prefix>-<date>-<time>[-N]` that no other run has: created here."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        path = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"cannot find a free run folder name {parent / stem}-N; pass --out DIR")


class RunLock:
    """The exclusive right to write a run folder; `release()` (or process exit) gives it back."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"--out {self.folder} is a file, not a folder; pass a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOCK_NAME
        self._f = open(self.path, "a+")
        try:
            _lock(self._f)
        except OSError as e:
            if e.errno not in _HELD:   # a file system without locks (ENOLCK): go on unlocked
                self.locked = False
                return
            self._f.seek(0)
            holder = self._f.read().strip() or "another process"
            self._f.close()
            raise ConfigError(
                f"{self.folder} is in use by another unet-fast train ({holder}); two runs must not "
                "write one folder. Wait for it to finish (or stop it), or pass another --out."
            ) from None
        self.locked = True
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"pid {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else '?'}"
                      f", since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._f.flush()

    def release(self) -> None:
        if not self._f.closed:
            try:
                if self.locked:
                    _unlock(self._f)
            finally:
                self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# errno of a lock that another process holds (flock: EWOULDBLOCK; msvcrt: EACCES or EDEADLK)
_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, getattr(errno, "EDEADLK", errno.EAGAIN)}


def _lock(f) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(f) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_stale_tmp(name: str) -> bool:
    """Whether a file name is one of the run's temporary files."""
    return name.startswith(".") and (name.endswith(TMP_SUFFIX) or name.endswith(".tmp.png"))


def clean_stale_tmp(folder) -> list[str]:
    """Removes the temporary files a killed writer left in `folder` (call it under the lock)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.is_file() and is_stale_tmp(p.name):
            try:
                p.unlink()
                removed.append(p.name)
            except OSError:
                pass
    return sorted(removed)
