"""Streaming reader over the packed shards, with a cursor that makes the stream resumable.

Where shards are split across ranks and workers: `worker_shards`. For epoch e the shard list is
permuted with (seed, e), identically on every rank; rank r takes every world_size-th shard and worker
w of that rank every num_workers-th of those. Within a shard, samples are visited in a seeded
permutation. The training stream is these epochs back to back, forever. (data.sampling=resampled
instead draws shards with replacement per (rank, worker), webdataset's ResampledShards.)

The stream of one (rank, worker) is therefore a pure function of its cursor (epoch, shard position,
sample position), which is all a checkpoint needs. The DataLoader hands batches out round-robin over
its workers; the loader remembers whose turn is next and, on resume, relabels the workers so that the
same worker goes first. Tar parsing is webdataset's; decoding is ours and touches only the image and
the class label (never a pickle), and a sample that fails to decode is skipped and counted.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import itertools
import io
import json
import logging
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gantrain.data.pack import FORMAT, INDEX_FORMAT, MANIFEST, fit
from gantrain.data.shards import (IMAGE_EXTS, ShardReader, ShardSpec, ShardUnavailable, describe, is_remote, join,
                                  local_path, cache_root, missing, read_bytes, redact)

log = logging.getLogger(__name__)


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Access:
    """How shards are reached (not what they hold): the cache for remote ones and the retries."""

    cache_dir: str = ""  # "" -> $XDG_CACHE_HOME/gantrain/shards (only remote shards are cached)
    cache_bytes: int = 20 << 30
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry, doubled per retry
    timeout: float = 60.0  # seconds to connect, and between reads, before a fetch counts as failed
    prefetch: int = 2  # remote shards fetched ahead of the one being read, per worker
    memory_cache_bytes: int = 0  # decoded samples kept per worker of an infinite stream (0: none)

    def reader(self, manifest: Manifest) -> ShardReader:
        cache = self.cache_dir or str(cache_root("shards"))
        return ShardReader(manifest.specs, label_ext=manifest.label_ext, cache_dir=cache,
                           cache_bytes=self.cache_bytes, retries=self.retries, backoff=self.backoff,
                           timeout=self.timeout, prefetch=self.prefetch)


@dataclass(frozen=True)
class Manifest:
    root: str  # the directory (or URL prefix) the manifest was read from, for messages and relative names
    num_images: int
    resolution: int  # of the decoded images; 0: any size (an index of foreign shards, see at())
    channels: int
    num_classes: int
    class_names: list[str]
    image_format: str
    shards: list[tuple[str, int]]  # (url, sample count)
    digest: str  # sha256 of manifest.json: identifies the dataset for caches
    checksums: list[str | None] = dataclasses.field(default_factory=list)  # per shard sha256, None if unlisted
    specs: list[ShardSpec] = dataclasses.field(default_factory=list)  # url, count, member table, size
    label_ext: str = "cls"  # the member holding the label: cls, json or "" (no labels)
    label_field: str = ""  # label_ext json: the field of the label
    resize: str = ""  # "" (packed: every image has the manifest's size) or how foreign images are fitted
    access: Access = Access()

    @property
    def urls(self) -> list[str]:
        return [url for url, _ in self.shards]

    def at(self, resolution: int, resize: str | None = None, access: Access | None = None) -> Manifest:
        """This data decoded at RESOLUTION (an index's images are fitted with RESIZE as pack does it)."""
        if not self.resize:
            return self if access is None else dataclasses.replace(self, access=access)
        return dataclasses.replace(self, resolution=resolution, resize=resize or self.resize,
                                   access=access or self.access)


IMAGE_FORMATS = IMAGE_EXTS  # image members the reader decodes
RESIZE_MODES = ("center-crop", "pad", "stretch")


def _field(data: dict[str, Any], key: str, kind: type, path: str, ok=lambda v: True, need: str = "",
           where: str = "") -> Any:
    """data[key] of type KIND (no bools for ints), or a one-line DataError naming the file and the field."""
    if key not in data:
        raise DataError(f"{path}: field '{where}{key}' is missing")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) or not ok(value):
        raise DataError(f"{path}: field '{where}{key}' must be {need or kind.__name__} (got {value!r:.60})")
    return value


def manifest_location(path: str | Path) -> tuple[str, str]:
    """(root, manifest url) for data.path: a directory / URL prefix holding manifest.json, or a .json file."""
    path = str(path)
    if path.lower().endswith(".json"):
        root = path.rsplit("/", 1)[0] if "/" in path else "."
        return root, path
    return path, join(path, MANIFEST)


def read_manifest(root: str | Path, access: Access | None = None) -> Manifest:
    """The manifest of a packed or indexed data set; any damage is one line naming the file and the field."""
    root, path = manifest_location(root)
    local = not is_remote(path)
    if local and Path(local_path(root)).exists() and not Path(local_path(root)).is_dir():
        raise DataError(f"{root}: data.path must be a directory holding {MANIFEST} and shards (or a manifest "
                        f".json), not a file")
    shown = redact(path)
    try:
        raw = read_bytes(path, (access or Access()).timeout)
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError as exc:
        if not missing(exc):
            raise DataError(f"{shown}: cannot be read ({describe(exc)})") from None
        raise DataError(f"{shown}: not found; write shards with `gantrain pack SOURCE {redact(root)} --resolution R`"
                        f" or index existing ones with `gantrain index PATTERN --out manifest.json`") from None
    except UnicodeDecodeError:
        raise DataError(f"{shown}: not UTF-8 text (a damaged or foreign file)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{shown}: not valid JSON ({exc})") from None
    except Exception as exc:  # an unreachable server, a refused credential, a failing pipe: before training
        raise DataError(f"{shown}: cannot be read ({describe(exc)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{shown}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") not in (FORMAT, INDEX_FORMAT):
        raise DataError(f"{shown}: unknown format {data.get('format')!r:.60} (expected {FORMAT} or {INDEX_FORMAT})")
    indexed = data["format"] == INDEX_FORMAT
    count = dict(ok=lambda v: v >= 0, need="an integer >= 0")
    num_images = _field(data, "num_images", int, shown, **count)
    if indexed:
        resolution = 0
        label = _field(data, "labels", dict, shown, need="an object (source, field)")
        label_ext = _field(label, "source", str, shown, ok=lambda v: v in ("cls", "json", "none"),
                           need="cls, json or none", where="labels.")
        label_field = _field(label, "field", str, shown, ok=bool, need="a JSON field name",
                             where="labels.") if label_ext == "json" else ""
        label_ext = "" if label_ext == "none" else label_ext
    else:
        resolution = _field(data, "resolution", int, shown, ok=lambda v: v > 0, need="an integer > 0")
        label_ext, label_field = "cls", ""
    channels = _field(data, "channels", int, shown, ok=lambda v: v in (1, 3), need="1 or 3")
    num_classes = _field(data, "num_classes", int, shown, **count)
    class_names = _field(data, "class_names", list, shown, ok=lambda v: all(isinstance(n, str) for n in v),
                         need="a list of strings")
    image_format = _field(data, "image_format", str, shown, ok=lambda v: v in IMAGE_FORMATS,
                          need=f"one of {', '.join(IMAGE_FORMATS)}")
    entries = _field(data, "shards", list, shown, ok=bool, need="a non-empty list")
    shards, checksums, specs = [], [], []
    for i, entry in enumerate(entries):
        where = f"shards[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{shown}: field '{where}' must be an object with name and count (got {entry!r:.60})")
        if indexed:
            url = join(root, _field(entry, "url", str, shown, ok=bool, need="a path or URL", where=f"{where}."))
        else:
            name = _field(entry, "name", str, shown, ok=lambda v: bool(v) and "/" not in v and v not in (".", ".."),
                          need="a file name in the data directory", where=f"{where}.")
            url = join(root, name)
            if local and not Path(url).is_file():
                raise DataError(f"{shown}: lists shard {name}, which is missing")
        number = _field(entry, "count", int, shown, **count, where=f"{where}.")
        size = _field(entry, "size", int, shown, **count, where=f"{where}.") if "size" in entry else None
        table = join(root, _field(entry, "table", str, shown, ok=bool, need="a path or URL",
                                  where=f"{where}.")) if "table" in entry else None
        shards.append((url, number))
        specs.append(ShardSpec(url, number, table, size))
        checksums.append(_field(entry, "sha256", str, shown, ok=lambda v: re.fullmatch(r"[0-9a-f]{64}", v),
                                need="64 lowercase hex digits", where=f"{where}.") if "sha256" in entry else None)
    return Manifest(root, num_images, resolution, channels, num_classes, class_names, image_format, shards,
                    hashlib.sha256(raw).hexdigest(), checksums, specs, label_ext, label_field,
                    "center-crop" if indexed else "", access or Access())


def open_data(data_cfg: Any) -> Manifest:
    """read_manifest with the access options of a DataConfig (cache, retries, resize)."""
    access = Access(cache_dir=data_cfg.cache_dir, cache_bytes=int(data_cfg.cache_gb * (1 << 30)),
                    retries=data_cfg.retries, timeout=data_cfg.timeout, prefetch=data_cfg.prefetch,
                    memory_cache_bytes=int(data_cfg.memory_cache_gb * (1 << 30)))
    manifest = read_manifest(data_cfg.path, access)
    return dataclasses.replace(manifest, resize=data_cfg.resize) if manifest.resize else manifest


@dataclass
class Cursor:
    """Position of one (rank, worker) stream: the next raw sample is shard `shard` of the epoch's list,
    position `sample` in that shard's visiting order. `skipped` counts corrupt samples passed over."""

    epoch: int = 0
    shard: int = 0
    sample: int = 0
    skipped: int = 0
    short: int = 0  # shards that held fewer samples than the manifest says (truncated, damaged)
    lost: int = 0  # shards that could not be fetched or opened after the retries, skipped whole

    def copy(self) -> Cursor:  # per sample: a plain constructor call is several times cheaper than replace()
        return Cursor(self.epoch, self.shard, self.sample, self.skipped, self.short, self.lost)


def worker_shards(num_shards: int, epoch: int, *, seed: int, shuffle: bool, rank: int, world_size: int,
                  worker: int, num_workers: int) -> list[int]:
    """Shard indices that (rank, worker) reads in EPOCH: split by node first, then by worker."""
    order = np.random.default_rng([seed, epoch]).permutation(num_shards) if shuffle else np.arange(num_shards)
    return order[rank::world_size][worker::num_workers].tolist()


def check_split(manifest: Manifest, world_size: int, num_workers: int) -> None:
    """An infinite stream needs a shard for every (rank, worker), or some worker would spin on nothing."""
    if len(manifest.shards) < world_size * num_workers:
        raise DataError(f"{redact(manifest.root)}: {len(manifest.shards)} shards cannot feed {world_size} ranks x "
                        f"{num_workers} workers; lower data.workers or repack with a smaller --shard-size")


def decode_sample(sample: dict[str, Any], manifest: Manifest) -> tuple[torch.Tensor, int]:
    """Image and label only; anything else in the sample is ignored, never unpickled."""
    data = sample.get("image")
    if data is None:
        raise ValueError(f"no image member ({', '.join(IMAGE_FORMATS)})")
    image = Image.open(io.BytesIO(data))
    mode = "L" if manifest.channels == 1 else "RGB"
    if manifest.resize:
        if image.format == "JPEG":  # decode at the smallest scale >= the target that JPEG can give for free
            image.draft(image.mode, (manifest.resolution, manifest.resolution))
        image = fit(image, manifest.resolution, mode, manifest.resize)
    elif image.size != (manifest.resolution, manifest.resolution):
        raise ValueError(f"size {image.size}, manifest says {manifest.resolution}")
    if image.mode != mode:
        image = image.convert(mode)
    label = _label(sample, manifest)
    array = np.array(image, dtype=np.uint8)  # decodes; one copy, writable
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1)), label


def _label(sample: dict[str, Any], manifest: Manifest) -> int:
    if not manifest.label_ext or manifest.label_ext not in sample:
        if manifest.num_classes > 1 and manifest.label_ext:
            raise ValueError(f"no .{manifest.label_ext} label")
        return 0
    raw = sample[manifest.label_ext]
    if manifest.label_ext == "cls":
        label = int(raw)
    else:
        value = json.loads(raw).get(manifest.label_field) if raw else None
        if isinstance(value, str) and value in manifest.class_names:
            label = manifest.class_names.index(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            label = value
        else:
            raise ValueError(f"json field {manifest.label_field!r} is {value!r:.40}, not a class")
    if not 0 <= label < max(manifest.num_classes, 1):
        raise ValueError(f"label {label} outside 0..{manifest.num_classes - 1}")
    return label


def _shard_order(num_shards: int, cur: Cursor, *, sampling: str, infinite: bool, seed: int, shuffle: bool,
                 rank: int, world_size: int, worker: int, num_workers: int) -> Iterator[tuple[int, int, int]]:
    """(epoch, position, shard index) from the cursor on; the cursor itself is left alone, so the caller can
    look ahead (to prefetch)."""
    if sampling == "resampled":
        # With replacement, independently per (rank, worker), as webdataset's ResampledShards draws them;
        # the position counts draws, and a restart replays (cheaply) that many draws.
        # cur.epoch only moves when a changed layout restarts the stream: then the draws differ too.
        epoch = cur.epoch
        draws = iter(wds.ResampledShards([str(i) for i in range(num_shards)], seed=seed, deterministic=True,
                                         worker_seed=lambda: (rank * 65536 + worker) * 100003 + epoch))
        for _ in range(cur.shard):
            next(draws)
        for position, draw in enumerate(draws, start=cur.shard):
            yield epoch, position, int(draw["url"])
        return
    split = dict(seed=seed, shuffle=shuffle, rank=rank, world_size=world_size, worker=worker,
                 num_workers=num_workers)
    epoch, position = cur.epoch, cur.shard
    while True:
        shards = worker_shards(num_shards, epoch, **split)
        for position in range(position, len(shards)):
            yield epoch, position, shards[position]
        if not infinite:
            return
        epoch, position = epoch + 1, 0


def skip_reason(exc: Exception) -> str:
    """An exception as a readable reason: without object reprs such as PIL's `<_io.BytesIO object at 0x..>`."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)) or type(exc).__name__


@dataclass
class _Decoded:
    entries: list  # per sample of the shard (table order): (image, label, key), or why it was skipped
    errors: list[str]  # the shard's damage messages, repeated on every visit as a read would repeat them


class _Memo:
    """data.memory_cache_gb: decoded shards of one (rank, worker) stream, kept until the budget is spent.

    Kept first come, never evicted: visits follow a fresh permutation each epoch, under which least
    recently used eviction would drop every shard just before it comes round again.
    """

    def __init__(self, budget: int):
        self.budget, self.used, self.full = budget, 0, False
        self.shards: dict[int, _Decoded] = {}

    def add(self, index: int, shard: _Decoded, url: str) -> None:
        size = sum(256 + (e[0].nbytes + len(e[2]) if isinstance(e, tuple) else len(e)) for e in shard.entries)
        if self.used + size > self.budget:
            self.full = True
            log.info("data.memory_cache_gb is spent (%.1f MiB in %d shards); %s and later shards are read and "
                     "decoded on every visit", self.used / (1 << 20), len(self.shards), redact(url))
            return
        self.shards[index], self.used = shard, self.used + size


def samples(manifest: Manifest, *, seed: int, shuffle: bool, infinite: bool, rank: int = 0,
            world_size: int = 1, worker: int = 0, num_workers: int = 1, cursor: Cursor | None = None,
            sampling: str = "epochs", max_bad_in_a_row: int = 1000,
            notes: dict[str, str] | None = None) -> Iterator[tuple[torch.Tensor, int, str, Cursor]]:
    """Decoded (image uint8 CxHxW, label, key, cursor after it) for one (rank, worker).

    sampling="epochs": every shard once per epoch, split across ranks and workers, reshuffled per epoch;
    sampling="resampled": shards drawn with replacement (ranks may overlap; needs infinite=True).
    Corrupt samples are skipped and counted (NOTES["last_skip"] says why the last one was); a shard shorter
    than the manifest says is warned about and counted; a shard that cannot be fetched after the retries is
    skipped whole and counted (NOTES["last_lost"]); MAX_BAD_IN_A_ROW corrupt samples in a row, or a whole
    round of shards without one good sample, is a DataError rather than a stream that never yields.
    """
    cur = dataclasses.replace(cursor) if cursor else Cursor()
    notes = {} if notes is None else notes
    if infinite and sampling == "epochs":
        check_split(manifest, world_size, num_workers)
    order = _shard_order(len(manifest.shards), cur, sampling=sampling, infinite=infinite, seed=seed,
                         shuffle=shuffle, rank=rank, world_size=world_size, worker=worker, num_workers=num_workers)
    reader = manifest.access.reader(manifest)
    # Only a stream that comes back to its shards can gain from remembering them.
    memo = _Memo(manifest.access.memory_cache_bytes) if infinite and manifest.access.memory_cache_bytes else None
    bad_in_a_row = barren_in_a_row = 0
    ahead: collections.deque = collections.deque()  # the shards after this one, data.prefetch of them
    try:
        while True:
            ahead.extend(itertools.islice(order, manifest.access.prefetch + 1 - len(ahead)))
            if not ahead:
                break
            epoch, position, index = ahead.popleft()
            if (epoch, position) != (cur.epoch, cur.shard):
                cur.epoch, cur.shard, cur.sample = epoch, position, 0
            url, expected = manifest.shards[index]
            if cur.sample and cur.sample >= expected:  # finished (or lost) before a restart: not fetched again
                continue
            cached = memo.shards.get(index) if memo is not None else None
            shard = None
            if cached is None:
                try:
                    shard = reader.open(index)
                except ShardUnavailable as exc:
                    cur.lost += 1
                    cur.sample = expected  # passed over as a whole; a resume here goes on with the next shard
                    notes["last_lost"] = str(exc)
                    log.warning("skipped shard %s", exc)
                    barren_in_a_row += 1
                    if barren_in_a_row > len(manifest.shards):
                        raise DataError(f"{redact(manifest.root)}: {barren_in_a_row} shards in a row gave no "
                                        f"usable sample (last: {exc})") from None
                    continue
            for *_, later in ahead:  # fetched in the background while this shard is decoded
                if memo is None or later not in memo.shards:
                    reader.prefetch(later)
            size, errors = (len(cached.entries), cached.errors) if cached else (len(shard), shard.errors)
            with shard if shard is not None else contextlib.nullcontext():
                for message in errors:
                    log.warning("damaged shard, read %d samples before: %s: %s", size, redact(url), message)
                if size < expected and cur.sample == 0:
                    cur.short += 1
                    notes["last_short"] = f"{redact(url)}: {size} of {expected} samples"
                    log.warning("short shard %s: read %d of the %d samples the manifest lists", redact(url),
                                size, expected)
                visit = np.random.default_rng([seed, cur.epoch, cur.shard, index]).permutation(size) \
                    if shuffle else np.arange(size)
                # A shard read from its start is remembered whole once its last sample has been decoded.
                record = [None] * size if memo is not None and cached is None and cur.sample == 0 \
                    and not memo.full else None
                yielded = False
                while cur.sample < size:
                    i = int(visit[cur.sample])
                    cur.sample += 1
                    if cached is not None:
                        entry = cached.entries[i]
                    else:
                        try:
                            sample = shard.sample(i)
                            entry = (*decode_sample(sample, manifest), sample["__key__"])
                        except Exception as exc:  # corrupt sample: skip and count, never stall the stream
                            entry = f"{shard.table.keys[i].decode()} in {redact(url)}: {skip_reason(exc)}"
                        if record is not None:
                            record[i] = entry
                    if isinstance(entry, str):  # why the sample was skipped
                        cur.skipped += 1
                        bad_in_a_row += 1
                        notes["last_skip"] = entry
                        if cur.skipped <= 10:
                            log.warning("skipped corrupt sample %s", entry)
                        if bad_in_a_row >= max_bad_in_a_row:
                            raise DataError(f"{redact(manifest.root)}: {bad_in_a_row} samples in a row failed to "
                                            f"decode (data.max_skipped_in_a_row); last: {entry}")
                        continue
                    bad_in_a_row, yielded = 0, True
                    yield entry[0], entry[1], entry[2], cur.copy()
                if record is not None:
                    memo.add(index, _Decoded(record, list(errors)), url)
            if shard is not None:
                reader.release(shard)
            barren_in_a_row = 0 if yielded else barren_in_a_row + 1
            if barren_in_a_row > len(manifest.shards):
                last = notes["last_skip"] if "last_skip" in notes else "empty"
                raise DataError(f"{redact(manifest.root)}: {barren_in_a_row} shards in a row gave no usable sample "
                                f"(last: {redact(url)}, {last})")
    finally:
        reader.close()


class ShardStream(IterableDataset):
    """Batches for one rank; each DataLoader worker plays one logical worker of the cursor."""

    def __init__(self, manifest: Manifest, *, batch_size: int, seed: int, shuffle: bool, infinite: bool,
                 rank: int, world_size: int, num_workers: int, cursors: list[Cursor], first_worker: int = 0,
                 sampling: str = "epochs", max_bad_in_a_row: int = 1000):
        self.manifest, self.batch_size, self.seed, self.sampling = manifest, batch_size, seed, sampling
        self.shuffle, self.infinite = shuffle, infinite
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.cursors, self.first_worker = cursors, first_worker
        self.max_bad_in_a_row = max_bad_in_a_row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.first_worker) % self.num_workers
        notes: dict[str, str] = {}
        stream = samples(self.manifest, seed=self.seed, shuffle=self.shuffle, infinite=self.infinite,
                         rank=self.rank, world_size=self.world_size, worker=worker,
                         num_workers=self.num_workers, cursor=self.cursors[worker], sampling=self.sampling,
                         max_bad_in_a_row=self.max_bad_in_a_row, notes=notes)
        batch: list[tuple[torch.Tensor, int, str, Cursor]] = []
        try:
            for item in stream:
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield self._collate(batch, worker, notes)
                    batch = []
        except DataError as exc:  # handed to the rank as data: a worker's exception arrives as a traceback
            yield {"error": str(exc), "worker": worker}
            return
        if batch:
            yield self._collate(batch, worker, notes)

    @staticmethod
    def _collate(batch: list, worker: int, notes: dict[str, str]) -> dict[str, Any]:
        images, labels, keys, cursors = zip(*batch)
        return {"images": torch.stack(images), "labels": torch.tensor(labels, dtype=torch.int64),
                "keys": list(keys), "worker": worker, "cursor": dataclasses.astuple(cursors[-1]), **notes}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is per-sample work; threads would only fight the trainer
    # A scheduler's SIGTERM (or a Ctrl-C) reaches the whole process group: the rank handles it, and a worker
    # that died of it would take the rank's checkpoint-and-stop down with it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


MAX_WORKER_RESTARTS = 3


class StreamLoader:
    """Infinite training batches for one rank, with `state_dict()` for exact resume.

    Exact for the same world size and data.workers; with other values the stream restarts at the next
    epoch (logged), since the split of shards differs.
    """

    def __init__(self, manifest: Manifest, *, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, state: dict[str, Any] | None = None,
                 pin_memory: bool = False, sampling: str = "epochs", max_bad_in_a_row: int = 1000):
        self.manifest, self.seed, self.shuffle, self.sampling = manifest, seed, shuffle, sampling
        self.max_bad_in_a_row = max_bad_in_a_row
        self.notes: dict[str, str] = {}  # why the last sample was skipped, which shard was last short
        self.rank, self.world_size = rank, world_size
        self.logical = max(num_workers, 1)
        self.cursors = [Cursor() for _ in range(self.logical)]
        self.turn = 0
        if state is not None:
            self._restore(state)
        if sampling == "epochs":
            check_split(manifest, world_size, self.logical)  # before forking workers, for a clear error
        self.num_workers, self.pin_memory, self.batch_size = num_workers, pin_memory, batch_size
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        """(Re)start the DataLoader at the cursors of the batches consumed so far: exact, whatever was prefetched."""
        dataset = ShardStream(self.manifest, batch_size=self.batch_size, seed=self.seed, shuffle=self.shuffle,
                              infinite=True, rank=self.rank, world_size=self.world_size, num_workers=self.logical,
                              cursors=[dataclasses.replace(c) for c in self.cursors], first_worker=self.turn,
                              sampling=self.sampling, max_bad_in_a_row=self.max_bad_in_a_row)
        self._loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                                  worker_init_fn=_worker_init if self.num_workers else None,
                                  persistent_workers=False)
        self._iter = iter(self._loader)

    def _restore(self, state: dict[str, Any]) -> None:
        layout = ("world_size", "rank", "seed", "shuffle", "sampling")
        same = len(state["cursors"]) == self.logical and \
            all(state.get(key) == getattr(self, key) for key in layout)
        if same:
            self.cursors = [Cursor(*c) for c in state["cursors"]]
            self.turn = int(state["turn"])
            return
        epoch = max(c[0] for c in state["cursors"]) + 1
        log.warning("data stream layout changed since the checkpoint (world size, data.workers, seed, "
                    "shuffle or sampling); restarting the stream at epoch %d, so the sample order is not exact", epoch)
        self.cursors = [Cursor(epoch=epoch) for _ in range(self.logical)]

    def __iter__(self) -> StreamLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            batch = next(self._iter)
        except RuntimeError as exc:
            # torch's message for a data worker that died (OOM killer, a stray SIGKILL): restart the workers
            # from the consumed cursors, a few times in a row at most.
            if not self.num_workers or "DataLoader worker" not in str(exc) or self.restarts >= MAX_WORKER_RESTARTS:
                raise
            self.restarts += 1
            log.warning("%s; restarting the data workers at the cursor (%d/%d)", exc, self.restarts,
                        MAX_WORKER_RESTARTS)
            self.close()
            self._start()
            return next(self)
        self.restarts = 0
        if "error" in batch:
            raise DataError(batch["error"])
        self.notes.update({k: batch[k] for k in ("last_skip", "last_short", "last_lost") if k in batch})
        if batch["worker"] != self.turn:
            raise RuntimeError(f"data worker {batch['worker']} answered out of turn (expected {self.turn})")
        self.cursors[self.turn] = Cursor(*batch["cursor"])
        self.turn = (self.turn + 1) % self.logical
        return batch["images"], batch["labels"]

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.cursors)

    @property
    def short_shards(self) -> int:
        return sum(c.short for c in self.cursors)

    @property
    def lost_shards(self) -> int:
        return sum(c.lost for c in self.cursors)

    def state_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "rank": self.rank, "seed": self.seed, "shuffle": self.shuffle,
                "sampling": self.sampling, "turn": self.turn,
                "cursors": [list(dataclasses.astuple(c)) for c in self.cursors]}

    def close(self) -> None:
        """Shut the workers down (idempotent); state_dict() stays valid."""
        self._iter = self._loader = None
