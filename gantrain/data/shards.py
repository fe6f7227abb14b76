"""Where shards live and how one sample is read from them: local files, URLs, a cache, member tables.

A shard is a plain (uncompressed) tar in WebDataset's layout: the members of one sample share a key (the
name up to the first dot of its basename) and follow each other. A **member table** lists, per sample, the
key and the (offset, size) of its image member and of its label member, so a worker reads one sample with
two `pread`s instead of holding the shard or parsing tar headers on the hot path. `gantrain pack` and
`gantrain index` write the tables next to the shards (`*.idx`, a NumPy .npz without pickles); a shard
without one is scanned once (with `tarfile`) when first opened and the table is kept in memory.

Shards and tables may be local paths, `file://`, `http(s)://`, `s3://`, `gs://` (fsspec and its back-ends)
or `pipe:COMMAND` (WebDataset's convention: the command writes the shard to stdout). A remote shard is
copied whole into `data.cache_dir` (atomically, checked against the size the manifest lists), read there
by seeking, and evicted least-recently-used once the cache holds more than `data.cache_gb`; the next
shard of the worker's order is fetched in a background thread while the current one is decoded. A fetch
that fails is retried with exponential backoff (`data.retries`), then the shard is reported unavailable:
the stream skips and counts it. Credentials are the back-ends' own (environment, ~/.aws, gcloud): they
never pass through gantrain's config.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|pipe:)", re.IGNORECASE)
TABLE_SUFFIX = ".idx"


def cache_root(kind: str) -> Path:
    """$XDG_CACHE_HOME/gantrain/KIND (~/.cache by default): where remote shards are copied ("shards") and a
    pack to object storage is staged ("pack")."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gantrain" / kind


class ShardUnavailable(OSError):
    """A shard that could not be fetched or opened (after the retries); the message names it."""


def is_remote(url: str) -> bool:
    return bool(REMOTE.match(url)) and not url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def join(root: str, name: str) -> str:
    """NAME relative to the directory (or URL prefix) ROOT; an absolute NAME (a URL, /path) stays as it is."""
    if REMOTE.match(name) or name.startswith("/"):
        return name
    if REMOTE.match(root) and not root.startswith("file://"):
        return root.rstrip("/") + "/" + name
    return str(Path(local_path(root)) / name)


def redact(url: str) -> str:
    """URL without user:password@ or a query string (signed URLs carry their credentials there)."""
    url = re.sub(r"(://)[^/@]*@", r"\1", url)
    return url.split("?", 1)[0] if REMOTE.match(url) else url


def describe(exc: BaseException) -> str:
    """One line for a failed read. fsspec reports a refused or dropped connection as FileNotFoundError with the
    real error as its cause: name the cause then."""
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and cause is not None and not isinstance(cause, FileNotFoundError):
        exc = cause
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def missing(exc: BaseException) -> bool:
    """A genuine 'no such file' (a 404, a missing key or path), not a connection failure in disguise."""
    cause = exc.__cause__
    return isinstance(exc, FileNotFoundError) and (cause is None or isinstance(cause, FileNotFoundError))


def read_bytes(url: str, timeout: float = 60.0) -> bytes:
    """The whole of a (small) file: a manifest or a member table."""
    if not is_remote(url):
        return Path(local_path(url)).read_bytes()
    if url.startswith("pipe:"):
        return subprocess.run(url[5:], shell=True, check=True, capture_output=True).stdout
    import fsspec

    with fsspec.open(url, "rb", **_stream(url, timeout)) as f:
        return f.read()


def _stream(url: str, timeout: float) -> dict[str, Any]:
    """fsspec options for one sequential read with TIMEOUT seconds to connect and between reads (a server
    that accepts and then says nothing must not hang the rank). Over HTTP a single streamed GET (block_size
    0), which works with servers that ignore Range requests; other back-ends use their defaults."""
    if url.startswith(("http://", "https://")):
        import aiohttp

        return {"block_size": 0, "client_kwargs": {"timeout": aiohttp.ClientTimeout(
            total=None, sock_connect=timeout, sock_read=timeout)}}
    if url.startswith(("s3://", "s3a://")):
        return {"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout}}
    return {}


def _copy_to(url: str, dest: Path, expected_size: int | None, timeout: float) -> None:
    """Copy URL to DEST through a temporary name; a short copy is an error, not a shard."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        with open(tmp, "wb") as out:
            if url.startswith("pipe:"):
                proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                assert proc.stdout is not None
                while chunk := proc.stdout.read(1 << 20):
                    out.write(chunk)
                if proc.wait() != 0:
                    raise OSError(f"command exited {proc.returncode}: {proc.stderr.read().decode()[-200:]!r}")
            else:
                import fsspec

                with fsspec.open(url, "rb", **_stream(url, timeout)) as f:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
        size = tmp.stat().st_size
        if expected_size is not None and size != expected_size:
            raise OSError(f"got {size} bytes, the manifest lists {expected_size} (connection dropped?)")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(url: str, dest: Path, *, expected_size: int | None, retries: int, backoff: float = 0.5,
          timeout: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """_copy_to with RETRIES retries, waiting backoff * 2^k between tries; ShardUnavailable after the last."""
    for attempt in range(retries + 1):
        try:
            _copy_to(url, dest, expected_size, timeout)
            return
        except Exception as exc:  # fsspec/aiohttp/botocore raise their own types: every failure is retried
            reason = describe(exc)
            if attempt == retries:
                raise ShardUnavailable(f"{redact(url)}: {reason} (after {retries + 1} tries)") from None
            log.warning("fetching %s failed (%s); retry %d/%d", redact(url), reason, attempt + 1, retries)
            sleep(backoff * 2 ** attempt)


# -- member tables ---------------------------------------------------------------------------------------


@dataclass
class Table:
    """Per sample: key and (image offset, image size, label offset, label size); -1 where a member is absent.
    `size` is the byte size of the tar it describes (a table for a different file is not used)."""

    keys: np.ndarray  # bytes, dtype S
    members: np.ndarray  # int64 [n, 4]
    size: int
    label_ext: str  # the member recorded as the label ("cls", "json", "" for none)

    def __len__(self) -> int:
        return len(self.keys)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, keys=self.keys, members=self.members, size=np.int64(self.size),
                 label_ext=np.array(self.label_ext.encode()))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Table:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            members = z["members"].astype(np.int64)
            if members.ndim != 2 or members.shape[1] != 4 or len(z["keys"]) != len(members):
                raise ValueError("not a member table")
            return cls(z["keys"], members, int(z["size"]), bytes(z["label_ext"]).decode())

    def within(self, size: int) -> Table:
        """The samples whose members all end within SIZE bytes (a truncated shard keeps those before the damage)."""
        ends = np.maximum(self.members[:, 0] + self.members[:, 1], self.members[:, 2] + self.members[:, 3])
        ok = np.cumprod(ends <= size).astype(bool)
        return Table(self.keys[ok], self.members[ok], size, self.label_ext)


def _key_ext(name: str) -> tuple[str | None, str]:
    """WebDataset's own grouping rule (key = name up to the first dot of the basename), suffix lowercased."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    return key, (ext or "").lower()


def scan(fileobj, size: int, label_ext: str = "cls", errors: list[str] | None = None,
         extensions: dict[str, int] | None = None) -> Table:
    """The member table of an uncompressed tar: headers only (tarfile seeks over the data). Damage ends the
    scan: the samples before it are kept and the reason goes to ERRORS. EXTENSIONS counts member suffixes."""
    keys: list[bytes] = []
    rows: list[list[int]] = []
    current: str | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for info in tar:
                if not info.isreg() or re.search(r"__[^/]*__($|/)", info.name):
                    continue
                key, ext = _key_ext(info.name)
                if key is None:
                    continue
                if extensions is not None:
                    extensions[ext] = extensions.get(ext, 0) + 1
                if key != current:
                    current = key
                    keys.append(key.encode())
                    rows.append([-1, -1, -1, -1])
                row = rows[-1]
                if ext in IMAGE_EXTS and row[0] < 0:
                    row[0], row[1] = info.offset_data, info.size
                elif ext == label_ext and row[2] < 0:
                    row[2], row[3] = info.offset_data, info.size
    except (tarfile.TarError, EOFError, OSError) as exc:
        if errors is not None:
            errors.append(f"{type(exc).__name__}: {exc}")
    table = Table(np.array(keys, dtype=bytes) if keys else np.zeros(0, "S1"),
                  np.array(rows, dtype=np.int64).reshape(-1, 4), size, label_ext)
    return table.within(size)


# -- opening shards --------------------------------------------------------------------------------------


@dataclass
class ShardSpec:
    url: str  # where the tar is
    count: int  # samples the manifest lists
    table: str | None = None  # where its member table is, if one was written
    size: int | None = None  # bytes, if listed (a fetched copy must have this size)


class OpenShard:
    """One shard opened for reading by seeking: `sample(i)` returns the raw members of sample i."""

    def __init__(self, spec: ShardSpec, path: str, table: Table, errors: list[str], fd: int | None = None):
        self.spec, self.path, self.table, self.errors = spec, path, table, errors
        self.fd = os.open(path, os.O_RDONLY) if fd is None else fd

    def __len__(self) -> int:
        return len(self.table)

    def sample(self, i: int) -> dict[str, Any]:
        key = self.table.keys[i].decode()
        image_off, image_size, label_off, label_size = self.table.members[i].tolist()
        sample: dict[str, Any] = {"__key__": key}
        if image_off >= 0:
            sample["image"] = os.pread(self.fd, image_size, image_off)
        if label_off >= 0:
            sample[self.table.label_ext] = os.pread(self.fd, label_size, label_off)
        return sample

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenShard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ShardReader:
    """Opens the shards of one data set for one worker: local ones in place, remote ones through the cache,
    with the next one prefetched. Tables are loaded (or scanned) once per shard and kept."""

    def __init__(self, shards: list[ShardSpec], *, label_ext: str = "cls", cache_dir: str | None = None,
                 cache_bytes: int = 20 << 30, retries: int = 3, backoff: float = 0.5, timeout: float = 60.0,
                 prefetch: int = 2):
        self.shards, self.label_ext = shards, label_ext
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.cache_bytes, self.retries, self.backoff, self.timeout = cache_bytes, retries, backoff, timeout
        self.prefetch_threads = max(prefetch, 1)
        self.tables: dict[int, Table] = {}
        self._pending: dict[int, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._held: set[Path] = set()  # cached copies this reader has open or is fetching: never evicted
        self._table_bytes: dict[int, bytes] = {}  # member tables of remote shards, fetched with the shard

    # remote copies
    def _cached(self, url: str) -> Path:
        if self.cache_dir is None:
            raise ShardUnavailable(f"{redact(url)}: a remote shard needs data.cache_dir (a local directory)")
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", redact(url).rsplit("/", 1)[-1])[-80:]
        return self.cache_dir / f"{digest}-{name}"

    def _fetch(self, index: int) -> Path:
        """The cached copy of remote shard INDEX (fetched if absent), and its member table's bytes loaded for
        _table(): both in one job, so that opening the shard after a prefetch waits for neither."""
        spec = self.shards[index]
        dest = self._cached(spec.url)
        self._held.add(dest)
        try:
            os.utime(dest)  # cached already: now the most recently used
            if spec.size is not None and dest.stat().st_size != spec.size:  # a copy of another version of it
                raise FileNotFoundError(dest)
        except FileNotFoundError:  # not cached, or evicted by another worker just now
            dest.parent.mkdir(parents=True, exist_ok=True)
            fetch(spec.url, dest, expected_size=spec.size, retries=self.retries, backoff=self.backoff,
                  timeout=self.timeout)
            self._evict()
        if spec.table is not None and index not in self.tables and index not in self._table_bytes:
            try:
                self._table_bytes[index] = self._table_file(spec.table)
            except Exception:  # _table() tries once more, or scans
                pass
        return dest

    def _table_file(self, url: str) -> bytes:
        """A member table's bytes; a remote one is kept in the cache directory like the shards."""
        if not is_remote(url):
            return read_bytes(url, self.timeout)
        path = self._cached(url)
        try:
            data = path.read_bytes()
            os.utime(path)
            return data
        except FileNotFoundError:
            data = read_bytes(url, self.timeout)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return data

    def _evict(self) -> None:
        """Least recently used first, until the cache fits; never what this reader holds. Other workers
        share the directory: a file they have open stays readable after it is unlinked."""
        assert self.cache_dir is not None
        files = []
        for path in self.cache_dir.iterdir():
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.cache_bytes:
                break
            if path in self._held:
                continue
            path.unlink(missing_ok=True)
            total -= size

    def prefetch(self, index: int) -> None:
        """Start fetching shard INDEX in the background (remote shards only; data.prefetch threads)."""
        spec = self.shards[index]
        if not is_remote(spec.url) or index in self._pending:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.prefetch_threads, thread_name_prefix="shard-prefetch")
        self._pending[index] = self._pool.submit(self._fetch, index)

    def local_copy(self, index: int) -> str:
        """A local file holding shard INDEX: the shard itself, or its cached copy (fetched now if need be)."""
        spec = self.shards[index]
        if not is_remote(spec.url):
            return local_path(spec.url)
        future = self._pending.pop(index, None)
        try:
            path = future.result() if future is not None else self._fetch(index)
        except ShardUnavailable:
            raise
        except OSError:  # a race with another worker's eviction (not the network): once more, in the foreground
            path = self._fetch(index)
        if not path.exists():  # evicted by another worker between the prefetch and now
            path = self._fetch(index)
        return str(path)

    def _table(self, index: int, f, size: int, errors: list[str]) -> Table:
        """The member table of the open shard F: the listed one if it describes this file, else a scan."""
        spec = self.shards[index]
        table = None
        if spec.table is not None:
            try:
                data = self._table_bytes.pop(index, None)
                table = Table.from_bytes(data if data is not None else self._table_file(spec.table))
                if table.size != size or table.label_ext != self.label_ext:
                    table = None  # written for another file: scan this one
            except Exception as exc:  # a missing or damaged table costs a scan, not the shard
                log.warning("member table %s unusable (%s); scanning the shard", redact(spec.table), exc)
                table = None
        if table is None:
            table = scan(f, size, self.label_ext, errors)
        self.tables[index] = table
        return table

    def open(self, index: int) -> OpenShard:
        spec = self.shards[index]
        try:
            path = self.local_copy(index)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                if not is_remote(spec.url):
                    raise
                path = str(self._fetch(index))  # evicted by another worker just now: once more
                fd = os.open(path, os.O_RDONLY)
        except ShardUnavailable:
            raise
        except OSError as exc:
            raise ShardUnavailable(f"{redact(spec.url)}: {type(exc).__name__}: {exc}") from None
        errors: list[str] = []
        try:
            size = os.fstat(fd).st_size
            table = self.tables.get(index)
            if table is None or table.size != size:
                with os.fdopen(os.dup(fd), "rb") as f:
                    table = self._table(index, f, size, errors)
        except BaseException:
            os.close(fd)
            raise
        return OpenShard(spec, path, table, errors, fd)

    def release(self, shard: OpenShard) -> None:
        shard.close()
        self._held.discard(Path(shard.path))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
