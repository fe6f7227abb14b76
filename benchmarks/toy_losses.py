"""Quality of each loss and regularizer on the toy problems, through the normal training loop.

Dirac-GAN (configs/toy-dirac.yaml, SGD lr 0.1, batch 64, start (theta, psi) = (1, 1)): steps until the
distance to the equilibrium falls below TOL for good, the final distance and how often theta changed
sign (oscillation). Ring of 8 Gaussians (configs/toy-ring.yaml, 1,500 steps of 256): modes covered and
the fraction of high-quality samples at the end, over SEEDS seeds. These are quality figures, not timings.

    python benchmarks/toy_losses.py [--dirac-steps 5000] [--ring-kimg 384] [--seeds 0 1 2] [--only ring]
                                    [--match wgan]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from gantrain import config as config_mod
from gantrain.engines import make_engine
from gantrain.train.loop import Trainer, resolve, run

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-3

DIRAC = {
    "non-saturating": [],
    "minimax": ["loss.name=minimax"],
    "wgan (clip 0.01)": ["loss.name=wgan", "loss.clip=0.01"],
    "wgan-gp (lambda 1)": ["loss.name=wgan-gp", "loss.gp.weight=1"],
    "hinge": ["loss.name=hinge"],
    "lsgan": ["loss.name=lsgan"],
    "non-saturating + R1 (gamma 1)": ["loss.r1.weight=1"],
    "non-saturating + R2 (gamma 1)": ["loss.r2.weight=1", "loss.r2.interval=1"],
    "non-saturating + zero-centred GP (1)": ["loss.gp.weight=1", "loss.gp.center=0"],
    "non-saturating + instance noise (0.3)": ["loss.instance_noise.std=0.3"],
    "hinge + R1 (gamma 1)": ["loss.name=hinge", "loss.r1.weight=1"],
}

RING = {
    "non-saturating": ["loss.r1.weight=0"],
    "minimax": ["loss.name=minimax", "loss.r1.weight=0"],
    "non-saturating + R1 (gamma 0.1)": [],
    "wgan (preset: RMSProp 5e-5, clip 0.01, n_critic 5)": ["preset=wgan", "loss.r1.weight=0"],
    "wgan-gp (preset: lambda 10, n_critic 5)": ["preset=wgan-gp", "loss.r1.weight=0"],
    "hinge": ["loss.name=hinge", "loss.r1.weight=0"],
    "hinge + spectral norm in D": ["loss.name=hinge", "loss.r1.weight=0", "model.spectral_norm=d"],
    "sngan (preset: hinge, spectral norm in D, n_dis 5)": ["preset=sngan", "loss.r1.weight=0"],
    "lsgan": ["loss.name=lsgan", "loss.r1.weight=0"],
    "non-saturating + minibatch stddev": ["loss.r1.weight=0", "model.minibatch=stddev"],
}


def dirac(overrides: list[str], steps: int) -> tuple[int | None, float, int]:
    base = ["loss.r1.weight=0", f"train.kimg={steps * 64 / 1000}", "log.progress=false"]
    cfg = resolve(config_mod.load(ROOT / "configs/toy-dirac.yaml", base + overrides), None, 1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), make_engine(cfg))
        converged, last_sign, flips, distance = None, 1.0, 0, float("nan")
        for step in range(1, steps + 1):
            trainer.train_step()
            fig = trainer.toy.evaluate(trainer.G.raw, trainer.D.raw, trainer.device)
            distance = fig["Toy/distance"]
            if fig["Toy/theta"] * last_sign < 0:
                flips, last_sign = flips + 1, -last_sign
            if distance < TOL:
                converged = converged or step
            else:
                converged = None
        trainer.loader.close()
    return converged, distance, flips


def ring(overrides: list[str], kimg: float, seed: int) -> tuple[float, float]:
    extra = [f"train.kimg={kimg}", f"log.snapshot_kimg={kimg}", f"log.image_kimg={kimg}", f"run.seed={seed}"]
    cfg = config_mod.load(ROOT / "configs/toy-ring.yaml", overrides + extra)
    with tempfile.TemporaryDirectory() as tmp:
        scalars = run(cfg, tmp)["scalars"]
    return scalars["Toy/modes_covered"], scalars["Toy/high_quality"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dirac-steps", type=int, default=5000)
    parser.add_argument("--ring-kimg", type=float, default=384)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=["dirac", "ring"])
    parser.add_argument("--match", default="", help="only the rows whose name contains this")
    args = parser.parse_args()
    logging.getLogger("gantrain").setLevel(logging.WARNING)

    if args.only != "ring":
        print(f"Dirac-GAN, {args.dirac_steps} alternating SGD steps (lr 0.1) from (1, 1); converged: distance < {TOL}")
        print("| objective | steps to converge | final distance | sign changes of theta |")
        print("|---|---|---|---|")
        for name, overrides in ((k, v) for k, v in DIRAC.items() if args.match in k):
            converged, distance, flips = dirac(overrides, args.dirac_steps)
            print(f"| {name} | {converged or 'not converged'} | {distance:.3g} | {flips} |", flush=True)
    if args.only != "dirac":
        print(f"\nRing of 8 Gaussians (std 0.05), {args.ring_kimg:g} kimg (batch 256), seeds {args.seeds}")
        print("| objective | modes covered (of 8) per seed | high-quality fraction per seed |")
        print("|---|---|---|")
        for name, overrides in ((k, v) for k, v in RING.items() if args.match in k):
            results = [ring(overrides, args.ring_kimg, seed) for seed in args.seeds]
            modes = ", ".join(f"{m:.0f}" for m, _ in results)
            quality = ", ".join(f"{q:.2f}" for _, q in results)
            print(f"| {name} | {modes} | {quality} |", flush=True)


if __name__ == "__main__":
    main()
