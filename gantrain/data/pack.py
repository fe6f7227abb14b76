"""Sources -> WebDataset tar shards + manifest.json.

Samples are written in a seeded random order, so every shard is a fair mix of classes and the reader
only has to shuffle shards and the samples within a shard. Each shard and the manifest are written
atomically; the manifest comes last, so a directory with a manifest is always complete.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from gantrain.atomic import atomic_open, atomic_write, sha256_file
from gantrain.data.shards import TABLE_SUFFIX, cache_root, is_remote, redact, scan
from gantrain.data.sources import Source

MANIFEST = "manifest.json"
FORMAT = "gantrain-shards/1"
INDEX_FORMAT = "gantrain-index/1"  # foreign shards scanned by `gantrain index`
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
log = logging.getLogger(__name__)


class PackError(ValueError):
    pass


def fit(image: Image.Image, resolution: int, mode: str, how: str = "center-crop") -> Image.Image:
    """IMAGE as MODE at RESOLUTION x RESOLUTION (Lanczos): `center-crop` keeps the central square, `pad` fits
    the whole image into the square on black, `stretch` resizes without keeping the aspect ratio. Pack and
    the reader of indexed shards both fit images with this."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        image = background
    image = image.convert(mode)
    w, h = image.size
    if how == "stretch" or w == h:
        pass
    elif how == "pad":
        side = max(w, h)
        canvas = Image.new(mode, (side, side))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    elif how == "center-crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    else:
        raise ValueError(f"unknown resize {how!r} (center-crop, pad or stretch)")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


def write_table(shard: Path, table_path: Path | None = None, label_ext: str = "cls") -> dict[str, Any]:
    """Scan SHARD's headers once and write its member table (atomically, next to it by default): the manifest
    entry's "table" (relative when next to the shard) and "size"."""
    table_path = table_path or shard.with_name(shard.name + TABLE_SUFFIX)
    size = shard.stat().st_size
    with open(shard, "rb") as f:
        table = scan(f, size, label_ext)
    atomic_write(table_path, table.to_bytes())
    name = table_path.name if table_path.parent == shard.parent else str(table_path)
    return {"table": name, "size": size}


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _guess_channels(source: Source, probe: int = 16) -> int:
    for i in range(min(probe, len(source))):
        try:
            if source.loader(i).mode not in GRAY_MODES:
                return 3
        except Exception:  # unreadable items are dealt with (and counted) while packing
            continue
    return 1


_JOB: dict[str, Any] = {}  # what a pack worker process needs (inherited through fork)


def _write_shard(number: int) -> dict[str, Any]:
    """Shard NUMBER of the pack in _JOB: the samples at positions [number * size, (number + 1) * size) of the
    seeded order, keyed by position, so the shards do not depend on how many workers wrote them. Written
    atomically, then a hidden record of it (count, sha256, table, skipped items) that a resumed pack reuses."""
    job = _JOB
    out_dir: Path = job["out_dir"]
    name = f"shard-{number:06d}.tar"
    record_path = out_dir / f".{name}.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("uploaded") or (out_dir / name).exists():
            return record
    source, size = job["source"], job["shard_size"]
    start = number * size
    skipped: list[str] = []
    count = 0
    with atomic_open(out_dir / name, "wb") as f, wds.TarWriter(f, mtime=0) as writer:
        for position in range(start, min(start + size, len(job["order"]))):
            index = int(job["order"][position])
            try:
                image = fit(source.loader(index), job["resolution"], job["mode"], job["resize"])
            except Exception as exc:  # a bad item must never stop a pack of a million images
                skipped.append(f"{source.names[index]}: {type(exc).__name__}: {exc}")
                continue
            writer.write({"__key__": f"{position:09d}", job["image_format"]: _encode(image, job["image_format"]),
                          "cls": int(source.labels[index])})
            count += 1
    record = {"name": name, "count": count, "sha256": sha256_file(out_dir / name), **write_table(out_dir / name),
              "skipped": skipped}
    if job["remote"] and count:  # straight to object storage: upload, then free the local disk
        _upload(out_dir / name, job["remote"])
        _upload(out_dir / record["table"], job["remote"])
        record["uploaded"] = True
    atomic_write(record_path, json.dumps(record))
    if job["remote"]:
        (out_dir / name).unlink(missing_ok=True)
        (out_dir / record["table"]).unlink(missing_ok=True)
    return record


def _upload(path: Path, remote: str) -> None:
    """PATH to REMOTE/<its name> through fsspec (s3://, gs://, ...; the back-end's own credentials)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(remote)
    fs.put_file(str(path), root.rstrip("/") + "/" + path.name)


def _remote_exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def staging_dir(url: str) -> Path:
    """Where a pack to URL keeps its shards until uploaded, and its resume records."""
    import hashlib

    return cache_root("pack") / hashlib.sha256(url.encode()).hexdigest()[:16]


def pack(source: Source, out_dir: str | Path, resolution: int, *, shard_size: int = 1000,
         image_format: str = "png", channels: int | None = None, seed: int = 0, force: bool = False,
         progress: bool = True, resize: str = "center-crop", workers: int = 1) -> dict[str, Any]:
    """Write SOURCE as shards of SHARD_SIZE samples at RESOLUTION x RESOLUTION; return the manifest.

    WORKERS processes write whole shards in parallel (the result is the same for any number). An interrupted
    pack started again with the same arguments keeps the shards it finished; the manifest comes last."""
    if resolution < 4 or resolution & (resolution - 1):
        raise PackError(f"--resolution must be a power of two >= 4 (got {resolution})")
    if resize not in ("center-crop", "pad", "stretch"):
        raise PackError(f"--resize must be center-crop, pad or stretch (got {resize})")
    if shard_size < 1:
        raise PackError(f"--shard-size must be >= 1 (got {shard_size})")
    if image_format not in ("png", "jpg"):
        raise PackError(f"--format must be png or jpg (got {image_format})")
    if workers < 1:
        raise PackError(f"--workers must be >= 1 (got {workers})")
    remote = str(out_dir).rstrip("/") if is_remote(str(out_dir)) else ""
    if remote:  # written locally shard by shard, each uploaded as soon as it is complete
        if _remote_exists(remote + "/" + MANIFEST) and not force:
            raise PackError(f"{redact(remote)}/{MANIFEST} already exists; pass --force to overwrite")
        out_dir = staging_dir(remote)
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST).exists() and not force:
        raise PackError(f"{out_dir / MANIFEST} already exists; pass --force to overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = channels or _guess_channels(source)
    if channels not in (1, 3):
        raise PackError(f"--channels must be 1 or 3 (got {channels})")
    mode = "L" if channels == 1 else "RGB"
    params = {"source": source.description, "items": len(source), "resolution": resolution, "channels": channels,
              "shard_size": shard_size, "image_format": image_format, "seed": seed, "resize": resize}
    state = out_dir / ".pack.json"
    if force or not state.exists() or json.loads(state.read_text()) != params:
        for stale in out_dir.glob(".shard-*.tar.json"):  # records of another pack: not reused
            stale.unlink()
        atomic_write(state, json.dumps(params))
    elif any(out_dir.glob(".shard-*.tar.json")):
        log.info("resuming the interrupted pack in %s: finished shards are kept", out_dir)

    order = np.random.default_rng(seed).permutation(len(source))
    numbers = range((len(source) + shard_size - 1) // shard_size)
    _JOB.clear()
    _JOB.update(source=source, out_dir=out_dir, order=order, shard_size=shard_size, resolution=resolution,
                mode=mode, resize=resize, image_format=image_format, remote=remote)
    bar = tqdm(total=len(source), desc=f"pack {source.description}", unit="img", disable=not progress)
    records = []
    try:
        if workers == 1:
            for number in numbers:
                records.append(_write_shard(number))
                bar.update(min(shard_size, len(source) - number * shard_size))
        else:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for record in pool.imap(_write_shard, numbers):
                    records.append(record)
                    bar.update(shard_size)
    finally:
        bar.close()
        _JOB.clear()
    skipped = [reason for record in records for reason in record["skipped"]]
    shards = []
    for record in records:
        if record["count"]:
            shards.append({k: v for k, v in record.items() if k not in ("skipped", "uploaded")})
        else:  # every item of this range was unreadable: no shard
            (out_dir / record["name"]).unlink(missing_ok=True)
            (out_dir / record["table"]).unlink(missing_ok=True)
    written = sum(s["count"] for s in shards)

    if written == 0:
        raise PackError(f"{source.description}: no readable images ({len(skipped)} skipped; first: "
                        f"{skipped[0] if skipped else 'none'})")
    for reason in skipped[:5]:
        log.warning("skipped unreadable image %s", reason)
    manifest = {
        "format": FORMAT,
        "source": source.description,
        "num_images": written,
        "resolution": resolution,
        "channels": channels,
        "image_format": image_format,
        "num_classes": len(source.class_names),
        "class_names": source.class_names,
        "seed": seed,
        "skipped": {"count": len(skipped), "examples": skipped[:20]},
        "shards": shards,
    }
    if remote:
        atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=1))
        _upload(out_dir / MANIFEST, remote)  # last: a manifest there means every shard is there
        (out_dir / MANIFEST).unlink()
    else:
        atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=1))
    for record in records:  # the manifest now holds what they said
        (out_dir / f".{record['name']}.json").unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    return manifest
