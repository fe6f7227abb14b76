"""`gantrain index PATTERN --out manifest.json`: a manifest for WebDataset shards that gantrain did not write.

Shards written by webdataset's ShardWriter, img2dataset, tarp or anything else that writes WebDataset's
layout (uncompressed tar; the members of a sample share a key and follow each other) are scanned once:
per shard the sample count, its byte size and sha256, and its member table (written next to the manifest,
in `<manifest stem>.tables/`); for the whole set the image member's extension, the label source (`.cls`, a
field of `.json`, or none) and the class names, and whether the images are grayscale. The trainer reads
the result like a packed data set and fits each image to `model.resolution` (`data.resize`).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from braceexpand import braceexpand
from PIL import Image

from gantrain.atomic import atomic_write, sha256_file
from gantrain.data.pack import GRAY_MODES, INDEX_FORMAT
from gantrain.data.shards import (IMAGE_EXTS, OpenShard, ShardSpec, ShardUnavailable, cache_root, is_remote,
                                  local_path, redact, scan)

log = logging.getLogger(__name__)
COMPRESSED = (".gz", ".tgz", ".bz2", ".xz", ".zst", ".lz4")


class ShardIndexError(ValueError):
    """The shards cannot be indexed; the message names the shard or the option."""


def expand(patterns: list[str]) -> list[str]:
    """Brace patterns (WebDataset's notation, `train-{000000..001023}.tar`) expanded, in order."""
    urls = [url for pattern in patterns for url in braceexpand(pattern)]
    if not urls:
        raise ShardIndexError("no shards: give a path, a URL or a brace pattern")
    for url in urls:
        if url.lower().endswith(COMPRESSED):
            raise ShardIndexError(f"{redact(url)}: compressed shards cannot be read by seeking; uncompress them "
                                  f"(plain .tar, as webdataset's ShardWriter and img2dataset write by default)")
    if len(set(urls)) != len(urls):
        raise ShardIndexError(f"{len(urls) - len(set(urls))} shards are listed twice")
    return urls


def _parse_label(label: str) -> tuple[str, str]:
    if label in ("auto", "cls", "none"):
        return label, ""
    if label.startswith("json:") and len(label) > 5:
        return "json", label[5:]
    raise ShardIndexError(f"--label must be auto, cls, none or json:FIELD (got {label!r})")


def _local_copy(url: str, cache_dir: Path, retries: int) -> str:
    if not is_remote(url):
        path = local_path(url)
        if not os.path.isfile(path):
            raise ShardIndexError(f"{url}: no such shard")
        return path
    from gantrain.data.shards import ShardReader

    reader = ShardReader([ShardSpec(url, 0)], cache_dir=str(cache_dir), retries=retries)
    try:
        return reader.local_copy(0)
    except ShardUnavailable as exc:
        raise ShardIndexError(str(exc)) from None
    finally:
        reader.close()


def _scan_one(url: str, label_ext: str, cache_dir: Path, retries: int) -> dict[str, Any]:
    path = _local_copy(url, cache_dir, retries)
    size = os.path.getsize(path)
    errors: list[str] = []
    extensions: dict[str, int] = {}
    with open(path, "rb") as f:
        table = scan(f, size, label_ext, errors, extensions)
    if errors and not len(table):
        raise ShardIndexError(f"{redact(url)}: not a readable tar ({errors[0]})")
    if errors:
        log.warning("%s: damaged after %d samples (%s); indexing those", redact(url), len(table), errors[0])
    return {"url": url, "path": path, "table": table, "size": size, "sha256": sha256_file(path),
            "extensions": extensions}


def index(patterns: list[str], out: str | Path, *, workers: int = 1, label: str = "auto",
          cache_dir: str | Path | None = None, retries: int = 3, force: bool = False) -> dict[str, Any]:
    """Scan the shards and write the manifest OUT (atomically, last) and its member tables; return it."""
    out = Path(out)
    if out.suffix != ".json":
        raise ShardIndexError(f"--out must name a .json file (got {out})")
    if out.exists() and not force:
        raise ShardIndexError(f"{out} already exists; pass --force to overwrite")
    if workers < 1:
        raise ShardIndexError(f"--workers must be >= 1 (got {workers})")
    urls = expand(patterns)
    label_kind, label_field = _parse_label(label)
    cache = Path(cache_dir) if cache_dir else cache_root("shards")
    if label_kind == "auto":  # what the first shard holds: a .cls member per sample, else no labels
        first = _scan_one(urls[0], "cls", cache, retries)
        label_kind = "cls" if first["extensions"].get("cls") else "none"
        if label_kind == "none" and first["extensions"].get("json"):
            log.info("no .cls members; the .json members are not read as labels (pass --label json:FIELD)")
    label_ext = "" if label_kind == "none" else label_kind
    with ThreadPoolExecutor(max_workers=workers) as pool:  # fetching and hashing: I/O bound
        scanned = list(pool.map(lambda url: _scan_one(url, label_ext, cache, retries), urls))

    tables_dir = out.with_name(out.stem + ".tables")
    tables_dir.mkdir(parents=True, exist_ok=True)
    image_exts: Counter[str] = Counter()
    labels: list[Any] = []
    channels = 1
    probed = 0
    sizes: list[tuple[int, int]] = []
    entries = []
    for i, shard in enumerate(scanned):
        table = shard["table"]
        for ext, n in shard["extensions"].items():
            if ext in IMAGE_EXTS:
                image_exts[ext] += n
        with OpenShard(ShardSpec(shard["url"], len(table)), shard["path"], table, []) as reader:
            for j in range(len(table)):
                sample = reader.sample(j)
                if label_ext and label_ext in sample:
                    raw = sample[label_ext]
                    if label_ext == "cls":
                        labels.append(int(raw))
                    else:
                        value = json.loads(raw).get(label_field)
                        if value is not None:
                            labels.append(value)
                if probed < 64 and "image" in sample:  # channels and sizes from the first images
                    probed += 1
                    try:
                        image = Image.open(io.BytesIO(sample["image"]))
                        sizes.append(image.size)
                        channels = 3 if image.mode not in GRAY_MODES else channels
                    except Exception:  # counted as corrupt at training time
                        pass
        name = f"{i:06d}.idx"
        atomic_write(tables_dir / name, table.to_bytes())
        url = shard["url"]
        if not is_remote(url):  # next to the manifest: relative, so the directory can move
            url = os.path.relpath(os.path.abspath(local_path(url)), out.parent.resolve())
        entries.append({"url": url, "count": len(table), "size": shard["size"], "sha256": shard["sha256"],
                        "table": f"{tables_dir.name}/{name}"})
    if not image_exts:
        raise ShardIndexError(f"{redact(urls[0])}...: no image members ({', '.join(IMAGE_EXTS)}) in any shard")
    if label_ext and not labels:
        raise ShardIndexError(f"--label {label}: no sample has that label")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        class_names = [str(c) for c in range(max(labels) + 1)] if labels else []
    elif all(isinstance(v, str) for v in labels):
        class_names = sorted(set(labels))
    else:
        raise ShardIndexError(f"--label {label}: labels must be all integers or all strings")
    if len(class_names) == 1:
        class_names = []
    manifest = {
        "format": INDEX_FORMAT,
        "source": " ".join(redact(p) for p in patterns),
        "num_images": sum(e["count"] for e in entries),
        "channels": channels,
        "image_format": image_exts.most_common(1)[0][0],
        "num_classes": len(class_names),
        "class_names": class_names,
        "labels": {"source": label_kind if label_ext else "none", **({"field": label_field} if label_field else {})},
        "image_sizes": {"probed": len(sizes), "min": [min(s[k] for s in sizes) for k in (0, 1)] if sizes else None,
                        "max": [max(s[k] for s in sizes) for k in (0, 1)] if sizes else None},  # (width, height)
        "shards": entries,
    }
    atomic_write(out, json.dumps(manifest, indent=1))
    return manifest
