"""Crash-safe file writes (a reader sees the old file or the complete new one, never a torn one) and file digests."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write to a temp file beside PATH; fsync and rename over PATH only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def atomic_save(path: str | Path, save: Callable[[str], None]) -> None:
    """For libraries that insist on a filename (safetensors): SAVE writes the temp path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600 through its own temp file; ours follow the umask
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Temp files of writers that died before their rename (kill -9): `.NAME.tmp-PID` whose PID is gone, and
    safetensors' own `.tmpXXXX` files. Only for a directory this process holds the lock of (RunLock)."""
    removed = []
    for path in Path(directory).iterdir():
        match = _TEMP.match(path.name)
        stale = (match and not _alive(int(match.group(1)))) or (path.name.startswith(".tmp") and path.is_file())
        if stale and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive flock on DIRECTORY/.lock: one writer per run dir. The kernel drops it when the process
    exits, however it exits, so a crash never leaves a stale lock behind."""

    def __init__(self, directory: str | Path):
        import fcntl

        self.path = Path(directory) / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise LockedError(f"{directory}: in use by another gantrain process (pid {holder}); wait for it, stop "
                              "it, or pass another --run-dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


class LockedError(RuntimeError):
    pass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
