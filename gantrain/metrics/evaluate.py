"""Evaluate a generator: embed reals (cached) and fakes, on one process or split over ranks.

Every rank draws the same latents from eval.seed, generates and embeds a contiguous, batch-aligned share
of them, and the shares are all-gathered in rank order. The feature matrix is therefore the one a single
process computes for the same seed, and so are the metrics. Reals are the first eval.num_real images of
the shard set in manifest order (packing already shuffled them); their features are cached on disk under
a key made of the manifest digest, the extractor's identity and the count.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gantrain.atomic import atomic_save
from gantrain.config import EvalConfig
from gantrain.data.stream import Manifest, samples
from gantrain.metrics import scores
from gantrain.metrics.features import Extractor, ExtractorError
from gantrain.models import Generator
from gantrain.sampling import to_uint8

log = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(n: int, batch: int, rank: int, world_size: int) -> range:
    """Rank's contiguous slice of 0..N-1, cut at multiples of BATCH so every rank runs the same batches a
    single process would."""
    chunks = -(-n // batch)
    per_rank = -(-chunks // world_size)
    start = min(rank * per_rank * batch, n)
    return range(start, min(start + per_rank * batch, n))


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's [rows, cols] matrix in rank order (row counts may differ, a rank may have
    none: an empty [0, 0] tensor); identity on one process."""
    rank, world_size = _world()
    if world_size == 1:
        return x
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    shape = torch.tensor(list(x.shape), device=device)
    shapes = [torch.zeros_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape)
    rows, cols = max(int(s[0]) for s in shapes), max(int(s[1]) for s in shapes)
    padded = torch.zeros((rows, cols), dtype=torch.float32, device=device)
    if len(x):  # a rank without a share holds a [0, 0] tensor: nothing to copy
        padded[:len(x)] = x.to(device)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s[0])] for p, s in zip(parts, shapes)]).cpu()


def _embed(extractor: Extractor, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Features of IMAGES in batches; a [0, 0] tensor for no images."""
    parts = [extractor.embed(images[i:i + batch])[0] for i in range(0, len(images), batch)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def cache_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("GANTRAIN_CACHE") or Path.home() / ".cache" / "gantrain")


def real_features(manifest: Manifest, extractor: Extractor, cfg: EvalConfig) -> torch.Tensor:
    """Features of the first eval.num_real reals; read from the cache when an earlier run computed them."""
    n = min(cfg.num_real or manifest.num_images, manifest.num_images)
    path = cache_dir(cfg) / "reference" / f"{manifest.digest[:16]}-{extractor.ident}-{n}.safetensors"
    rank, world_size = _world()
    if path.is_file():
        try:
            return load_file(str(path))["features"]
        except Exception as exc:  # a damaged cache file is recomputed, never trusted
            log.warning("ignoring unreadable reference cache %s: %s", path, exc)
    mine = share(n, cfg.batch, rank, world_size)
    stream = samples(manifest, seed=0, shuffle=False, infinite=False)
    images = [image for image, *_ in itertools.islice(stream, mine.start, mine.stop)]
    features = gather_rows(_embed(extractor, torch.stack(images), cfg.batch) if images else torch.zeros(0, 0))
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda tmp: save_file({"features": features.contiguous()}, tmp,
                                                metadata={"manifest": manifest.digest, "extractor": extractor.ident}))
    return features


def eval_latents(G: Generator, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """N latents (and uniformly drawn classes for a conditional G): the same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    c = torch.randint(0, G.num_classes, (n,), generator=gen) if G.num_classes else None
    return z, c


@torch.no_grad()
def fake_images(G: Generator, z: torch.Tensor, c: torch.Tensor | None, resolution: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 samples at RESOLUTION, quantized as saved images are (what FID is defined on)."""
    images = G(z.to(device), None if c is None else c.to(device)).float()
    if images.shape[-1] != resolution:  # a growing model below its final resolution
        images = F.interpolate(images, size=resolution, mode="nearest")
    return to_uint8(images).cpu()


def fake_features(G: Generator, extractor: Extractor, cfg: EvalConfig, resolution: int,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    rank, world_size = _world()
    z, c = eval_latents(G, cfg.num_samples, cfg.seed)
    mine = share(cfg.num_samples, cfg.batch, rank, world_size)
    parts = [extractor.embed(fake_images(G, z[i:i + cfg.batch], None if c is None else c[i:i + cfg.batch],
                                         resolution, device))
             for i in range(mine.start, mine.stop, cfg.batch)]
    features = gather_rows(torch.cat([f for f, _ in parts]) if parts else torch.zeros(0, 0))
    if not extractor.has_logits:
        return features, None
    return features, gather_rows(torch.cat([lg for _, lg in parts]) if parts else torch.zeros(0, 0))


class Figures(dict):
    """Metric name -> value, plus the feature space they were measured in and the caveats about their
    sample counts (scores.caveats)."""

    space: str = ""
    note: str = ""
    caveats: list[str] = []


def _check_accuracy(G: Generator, extractor: Extractor) -> None:
    """acc compares the classifier's decision with G's label: both must index the same classes."""
    if not G.num_classes:
        raise ExtractorError("eval.metrics: acc needs a conditional generator (this one is unconditional)")
    if extractor.kind != "classifier":
        raise ExtractorError("eval.metrics: acc needs eval.extractor=classifier, a classifier trained on the "
                             f"data's own labels (got {extractor.kind})")
    classes = extractor.net.arch["num_classes"]
    if classes != G.num_classes:
        raise ExtractorError(f"eval.extractor_path: {extractor.path} tells {classes} classes apart, the "
                             f"generator has {G.num_classes}: acc needs a classifier over the same labels")


def evaluate(G: Generator, extractor: Extractor, manifest: Manifest, cfg: EvalConfig,
             device: torch.device | str = "cpu", metrics: list[str] | None = None) -> Figures:
    """Every figure of METRICS (default cfg.metrics) for G against the shard set, plus eval seconds.
    Collective when a process group is up: every rank must call it; every rank gets the figures."""
    start = time.perf_counter()
    names = metrics or cfg.metrics
    if "acc" in names:
        _check_accuracy(G, extractor)
    was_training = G.training
    G.eval()
    try:
        real = real_features(manifest, extractor, cfg)
        fake, fake_logits = fake_features(G, extractor, cfg, manifest.resolution, device)
    finally:
        G.train(was_training)
    labels = eval_latents(G, cfg.num_samples, cfg.seed)[1]  # gathered rows keep the latents' order
    figures = Figures(scores.compute(names, real, fake, fake_logits, kid_subsets=cfg.kid_subsets,
                                     kid_subset_size=cfg.kid_subset_size, k=cfg.k, seed=cfg.seed,
                                     fake_labels=labels))
    figures.space, figures.note = extractor.space(real.shape[1]), extractor.note
    figures.caveats = scores.caveats(names, len(real), len(fake), real.shape[1],
                                     None if fake_logits is None else fake_logits.shape[1],
                                     kid_subset_size=cfg.kid_subset_size, k=cfg.k)
    figures["seconds"] = time.perf_counter() - start
    figures["num_real"], figures["num_fake"] = len(real), len(fake)
    return figures
