"""The shard reader against a tight PIL loop, worker scaling, HTTP with latency, and pack throughput.

1. One process: samples/s of `gantrain.data.stream.samples` (member table + pread + decode + label +
   cursor) against a loop that decodes the same image bytes with PIL straight from memory (target >= 0.9),
   for 32x32 grayscale PNG (MNIST-5k) and 256x256 RGB JPEG (the 1,797 scikit-learn digits upscaled).
   Interleaved rounds, median.
2. Workers: img/s of the training loader (StreamLoader, batches of 64) with data.workers 1 and 2.
3. HTTP: the same loader over shards served on 127.0.0.1 by a threaded server adding LATENCY per request
   (tests/shard_server.py), cold cache, against the local shards (target: within 10%).
4. Pack: img/s of `gantrain pack` (decode, fit, encode, tar, member table, sha256).

    .venv/bin/python benchmarks/reader.py [--rounds 5] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from gantrain.data.pack import pack  # noqa: E402
from gantrain.data.sources import open_source  # noqa: E402
from gantrain.data.stream import Access, StreamLoader, read_manifest, samples  # noqa: E402
from shard_server import ShardServer  # noqa: E402


def image_blobs(manifest) -> list[bytes]:
    reader = manifest.access.reader(manifest)
    blobs = []
    for index in range(len(manifest.shards)):
        with reader.open(index) as shard:
            blobs += [shard.sample(i)["image"] for i in range(len(shard))]
    return blobs


def one_process(manifest, rounds: int) -> tuple[float, float]:
    blobs = image_blobs(manifest)
    mode = "L" if manifest.channels == 1 else "RGB"

    def pil_loop() -> int:
        for blob in blobs:
            with Image.open(io.BytesIO(blob)) as image:
                array = np.array(image.convert(mode), dtype=np.uint8)
            torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        return len(blobs)

    def reader() -> int:
        return sum(1 for _ in samples(manifest, seed=0, shuffle=True, infinite=False))

    ours, theirs = [], []
    for _ in range(rounds):
        for fn, out in ((reader, ours), (pil_loop, theirs)):
            start = time.perf_counter()
            n = fn()
            out.append(n / (time.perf_counter() - start))
    return statistics.median(ours), statistics.median(theirs)


def loader_rate(manifest, workers: int, images: int, batch: int = 64) -> float:
    loader = StreamLoader(manifest, batch_size=batch, seed=0, num_workers=workers)
    next(loader)  # workers started, first shards open
    start = time.perf_counter()
    for _ in range(images // batch):
        next(loader)
    rate = (images // batch) * batch / (time.perf_counter() - start)
    loader.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the HTTP server waits per request")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mnist = tmp / "mnist5k-32"
        start = time.perf_counter()
        made = pack(open_source("mnist5k"), mnist, 32, shard_size=500, progress=False)
        pack_png = made["num_images"] / (time.perf_counter() - start)
        rgb = tmp / "digits-256"
        start = time.perf_counter()
        made = pack(open_source("digits"), rgb, 256, shard_size=200, channels=3, image_format="jpg", progress=False)
        pack_jpg = made["num_images"] / (time.perf_counter() - start)
        print(f"pack  mnist5k -> 32x32x1 png:   {pack_png:6.0f} img/s   digits -> 256x256x3 jpg: {pack_jpg:6.0f} img/s"
              f"   (one process)")

        for data in (mnist, rgb):
            manifest = read_manifest(data)
            a, b = one_process(manifest, args.rounds)
            size = f"{manifest.resolution}x{manifest.resolution}x{manifest.channels} {manifest.image_format}"
            print(f"read  {size:>16}: shard reader {a:6.0f} img/s   PIL loop over the same bytes {b:6.0f} img/s   "
                  f"ratio {a / b:.3f}  (target >= 0.9; one process, median of {args.rounds})")
            rates = {w: loader_rate(manifest, w, 4992 if manifest.resolution == 32 else 1536) for w in (1, 2)}
            print(f"      loader, batches of 64: 1 worker {rates[1]:6.0f} img/s   2 workers {rates[2]:6.0f} img/s   "
                  f"scaling {rates[2] / rates[1]:.2f}x")

        manifest = read_manifest(mnist)
        local = loader_rate(manifest, 2, 2 * 4992)
        for depth in (2, 4):
            with ShardServer(mnist, latency=args.latency, log_dir=tmp) as server:
                remote = read_manifest(server.url, Access(cache_dir=str(tmp / f"cache-{depth}"), prefetch=depth))
                over_http = loader_rate(remote, 2, 2 * 4992)
                requests = len(server.log)
            print(f"http  32x32x1 png, {args.latency * 1000:.0f} ms per request, cold cache, 2 workers, data.prefetch "
                  f"{depth}: {over_http:6.0f} img/s   local {local:6.0f} img/s   ratio {over_http / local:.3f}  "
                  f"(target >= 0.9; 2 epochs of 10 shards x 500, {requests} requests)")


if __name__ == "__main__":
    main()
