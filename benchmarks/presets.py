"""Preset quality at equal wall time: every CPU preset trained for the same number of minutes on the bundled
MNIST-5k digits, then its last G_ema judged by FID / KID / precision / recall (and class accuracy for a
conditional G) in the digit classifier's feature space. Prints one table for docs/benchmarks.md.

    .venv/bin/python benchmarks/presets.py [--minutes 10] [--parallel 2] [--only quickstart,progan-cpu]

Each preset runs as shipped except: train.kimg is raised so that the wall-time limit, not the kimg count,
ends the run (the preset's schedule, including ProGAN's growth, runs as written up to that point), and the
in-training evaluation is off so that it does not spend the preset's minutes. At the limit the run gets
SIGTERM, finishes its step and checkpoints, the way a scheduler stops a job. With --parallel 2 two presets
run at a time with one thread each (every preset gets one core); --parallel 1 gives each both cores.
The reals of the evaluation are the 5,000 training images (FID against the training set, as usual).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from limited_data import GANTRAIN, REPO, prepare  # noqa: E402

PRESETS = ["quickstart", "progan-cpu", "stylegan2-cpu", "biggan-cpu"]


def train(preset: str, runs: Path, minutes: float, threads: int, extra: list[str]) -> dict:
    run_dir = runs / preset
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    overrides = ["train.kimg=100000", "eval.metrics=[]", "log.progress=false", "log.snapshot_kimg=100000", *extra]
    start = time.monotonic()
    with open(runs / f"{preset}.log", "w") as out:
        proc = subprocess.Popen([*GANTRAIN, "train", str(REPO / "configs" / f"{preset}.yaml"), "--run-dir",
                                 str(run_dir), *overrides], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # finish the step, checkpoint, exit 0
            proc.wait()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{preset}: gantrain train exited {proc.returncode} (see {runs / f'{preset}.log'})")
    latest = run_dir / (run_dir / "latest").read_text().strip()
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    return {"preset": preset, "checkpoint": latest, "wall_s": wall, "kimg": stats[-1]["Progress/kimg"],
            "img_per_sec": stats[-1].get("Timing/img_per_sec", float("nan"))}


def evaluate(row: dict, full: Path, classifier: Path, samples: int, conditional: bool) -> dict:
    out = Path(str(row["checkpoint"]) + ".presets.json")
    metrics = "fid,kid,pr" + (",acc" if conditional else "")
    subprocess.run([*GANTRAIN, "eval", str(row["checkpoint"]), "--data", str(full), "--metrics", metrics,
                    "--num-samples", str(samples), "--extractor", "classifier", "--extractor-path", str(classifier),
                    "--json", str(out)], check=True, cwd=REPO, capture_output=True)
    return {**row, **json.loads(out.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--parallel", type=int, default=2, choices=[1, 2])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--only", help="comma-separated presets (default: all)")
    parser.add_argument("--data", default=str(REPO / "data"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "presets"))
    parser.add_argument("overrides", nargs="*", help="key=value applied to every preset")
    args = parser.parse_args()
    full, _, classifier = prepare(Path(args.data))
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    presets = args.only.split(",") if args.only else PRESETS
    threads = 2 // args.parallel
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda p: train(p, runs, args.minutes, threads, args.overrides), presets))
    rows = [evaluate(r, full, classifier, args.samples, r["preset"].startswith("biggan")) for r in rows]
    print(f"{args.minutes:g} minutes per preset, {threads} thread(s) each, {args.parallel} at a time; "
          f"{args.samples} samples against the 5,000 digits")
    print("| preset | kimg | img/s | FID | KID x 1e3 | precision | recall | class acc |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        acc = f"{r['acc']:.3f}" if "acc" in r else "–"
        print(f"| {r['preset']} | {r['kimg']:.1f} | {r['img_per_sec']:.0f} | {r['fid']:.2f} | {r['kid'] * 1e3:.3f} "
              f"| {r['precision']:.3f} | {r['recall']:.3f} | {acc} |")
    (runs / "presets.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
