"""One GPU check: the CUDA-specific tests and the training-speed figures, in one run, into one report.

Called by scripts/gpu_check.sh (which puts the carried wheels on the path first):

    python scripts/gpu_check.py OUT_DIR [--dry-run] [--budget-s 480]

Parts, in this order, each inside what is left of the wall-time budget:
1. the machine: device, capability, memory, torch / CUDA / cuDNN / NCCL versions, what is importable;
2. the `gpu`-marked tests (tests/test_cuda.py and the rest): single engine on the GPU, DeepSpeed ZeRO-1/2
   at world size 1 over NCCL, fp16 with the per-network scalers through R1 and path length, bf16, ADA
   under deterministic kernels, pinned memory, resume == uninterrupted, a GPU checkpoint on CPU and back;
3. full training steps (the loop's phases, EMA, lazy regularization, fed from memory) for each model at
   its real size, fp32 / bf16 / fp16: img/s, s/kimg and peak memory; one subprocess per setting, so each
   peak is its own; then a few of them again under engine.compile (graph building timed apart). Settings
   that do not fit the budget, or models not built yet, are listed as skipped, with the reason.

It writes OUT_DIR/gpu-report.json and OUT_DIR/gpu-report.md (and the tests' junit XML and log). The
dry run does the same on CPU at tiny sizes (the gpu tests run on CPU through GANTRAIN_TEST_DEVICE=cpu),
so that CI exercises every line of this file.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # gantrain from this checkout, installed or not
# The published anchor: StyleGAN2 at 256x256, batch 16, one A100 (NVlabs stylegan3, docs/configs.md).
ANCHOR = {"name": "stylegan2-256-batch16", "sec_per_kimg": 12.53, "device": "one A100",
          "source": "NVlabs stylegan3 docs/configs.md (StyleGAN2, 256x256, batch 16)"}
PACKAGES = ("torch", "numpy", "deepspeed", "webdataset", "accelerate", "tensorboard", "torchmetrics",
            "safetensors", "pytest", "pydantic")


# name -> (config file, resolution, batch, overrides). Real sizes on a GPU, tiny ones for the dry run.
def settings(dry_run: bool) -> dict[str, tuple[str | None, int, int, list[str]]]:
    no_aug = ["augment.name=none"]
    if dry_run:
        return {
            "dcgan-16": ("configs/quickstart.yaml", 16, 8, ["model.channels=8", "model.z_dim=16"]),
            "progan-16-stabilize": ("configs/progan-cpu.yaml", 16, 8, ["progressive.start_resolution=16"]),
            "stylegan2-16": ("configs/stylegan2-cpu.yaml", 16, 8, ["model.channel_base=256", "model.max_channels=32",
                                                                   "model.z_dim=32", "model.w_dim=32"]),
            "stylegan2-16-ada": ("configs/stylegan2-cpu.yaml", 16, 8, [
                "model.channel_base=256", "model.max_channels=32", "model.z_dim=32", "model.w_dim=32",
                "augment.name=ada", "augment.p=0.5", "augment.target=null"]),
            "biggan-32": ("configs/biggan-cpu.yaml", 32, 8, ["model.channels=4", "model.shared_dim=8",
                                                             "model.z_dim=16"]),
        }
    return {
        "stylegan2-paper256": ("configs/stylegan2-paper256.yaml", 256, 64, no_aug),
        ANCHOR["name"]: ("configs/stylegan2-paper256.yaml", 256, 16, no_aug),
        "stylegan2-paper256-ada": ("configs/stylegan2-paper256.yaml", 256, 64,
                                   ["augment.p=0.5", "augment.target=null"]),
        "stylegan2-config-f-1024": ("configs/stylegan2-1024.yaml", 1024, 32, no_aug),
        "dcgan-64": ("configs/quickstart.yaml", 64, 128, ["model.channels=64", "model.z_dim=100"]),
        # The 256x256 stage of the CelebA-HQ run (its batch table gives 14): the blocks above are idle there.
        "progan-256-stabilize": ("configs/progan-celebahq-1024.yaml", 256, 14, ["progressive.start_resolution=256"]),
        # The paper's networks (ch 96); 256 per pass, as the reference's 8-GPU script (2048 in 8 accumulations).
        "biggan-128-ch96": ("configs/biggan-imagenet128.yaml", 128, 256, []),
    }


# engine.compile for a few settings only, after all the others: building the graphs takes minutes on a
# GPU (and ~20 s on CPU even for the dry run's tiny DCGAN).
GPU_COMPILE = {("stylegan2-paper256", "fp16"), ("stylegan2-paper256", "bf16"), ("dcgan-64", "fp32"),
               ("stylegan2-config-f-1024", "fp16")}
DRY_COMPILE = {("dcgan-16", "fp32")}
DRY_PRECISION = {"dcgan-16": "fp32", "progan-16-stabilize": "bf16", "stylegan2-16": "fp16", "stylegan2-16-ada": "bf16",
                 "biggan-32": "fp32"}


def precisions(name: str, dry_run: bool) -> list[str]:
    """Every precision on a GPU; on the dry run one per setting (each path once, inside CI's minutes)."""
    return [DRY_PRECISION.get(name, "fp32")] if dry_run else ["fp32", "bf16", "fp16"]


# ---------------------------------------------------------------------------------------------- machine
def machine() -> dict:
    import torch

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "packages": {}}
    for name in PACKAGES:
        try:
            info["packages"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info["packages"][name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2 ** 30, 1), multiprocessors=props.multi_processor_count,
                    device_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version(),
                    nccl=".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None)
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=REPO, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = None
    return info


# ------------------------------------------------------------------------------------------------ tests
def run_tests(out: Path, dry_run: bool, seconds: float) -> dict:
    """The gpu-marked tests; on the dry run they run on CPU (GANTRAIN_TEST_DEVICE=cpu)."""
    xml, log = out / "gpu-tests.xml", out / "gpu-tests.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry_run:
        env["GANTRAIN_TEST_DEVICE"] = "cpu"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
               f"--junitxml={xml}", str(REPO / "tests")]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=seconds)
        log.write_text(result.stdout + result.stderr)
        rc = result.returncode
    except subprocess.TimeoutExpired as e:
        log.write_text(f"{e.stdout or ''}{e.stderr or ''}\n[stopped after {seconds:.0f} s]")
        rc = "timeout"
    summary = {"command": " ".join(command[1:]), "rc": rc, "seconds": round(time.perf_counter() - start, 1),
               "cases": []}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = "failed" if child.tag != "skipped" else "skipped"
                    message = (child.get("message") or child.text or "").strip().splitlines()[0][:300] \
                        if (child.get("message") or child.text) else ""
            summary["cases"].append({"test": f"{case.get('classname')}::{case.get('name')}",
                                     "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message})
    counts = {k: sum(c["outcome"] == k for c in summary["cases"]) for k in ("passed", "failed", "skipped")}
    summary.update(counts)
    return summary


# ------------------------------------------------------------------------------------------- benchmarks
def synthetic_data(root: Path, resolution: int, channels: int = 3, count: int = 10) -> Path:
    """A packed data set of COUNT random images in 10 classes (its manifest gives the trainer resolution,
    channels and classes; the images themselves come from memory)."""
    import numpy as np

    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    out = root / f"random-{resolution}-{channels}-{count}"
    if not (out / "manifest.json").exists():
        rng = np.random.default_rng(0)
        shape = (count, resolution, resolution, channels) if channels > 1 else (count, resolution, resolution)
        npz = root / f"random-{resolution}-{channels}-{count}.npz"
        np.savez(npz, images=rng.integers(0, 256, shape, dtype=np.uint8), labels=np.arange(count) % 10)
        pack(open_source(str(npz)), out, resolution, shard_size=count, progress=False)
    return out


def bench_one(name: str, precision: str, compiled: bool, dry_run: bool, data_root: Path) -> dict:
    """Time full training steps for one setting in this process (gantrain.train.bench); returns the figures.
    Under engine.compile the warm-up steps include building the graphs (timed apart: warmup_s)."""
    import torch

    from gantrain import config as config_mod
    from gantrain.data.stream import read_manifest
    from gantrain.train.bench import time_steps
    from gantrain.train.loop import resolve

    config, resolution, batch, overrides = settings(dry_run)[name]
    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    warmup, steps = (1, 2) if dry_run else (4, 16)  # 16: one lazy R1 phase (interval 16), four path-length ones
    data = synthetic_data(data_root, resolution, 1 if dry_run else 3)
    cfg = config_mod.load(REPO / config, [
        f"data.path={data}", "data.workers=0", "eval.metrics=none", f"train.batch={batch}", "train.micro_batch=null",
        f"engine.precision={precision}", f"engine.device={device}", "engine.name=single", "log.progress=false",
        f"engine.compile={str(compiled).lower()}", *overrides])
    manifest = read_manifest(data)
    return {"name": name, **time_steps(resolve(cfg, manifest, 1), manifest, device, precision, warmup, steps,
                                       compiled)}


def run_benchmarks(out: Path, dry_run: bool, deadline: float) -> list[dict]:
    """Each setting in its own process on a GPU (its own peak memory; an out-of-memory stays its own);
    the dry run times its few tiny settings in one process (CPU figures are not the point there)."""
    rows: list[dict] = []
    data_root = Path(tempfile.mkdtemp(prefix="gantrain-gpu-check-"))
    todo, compiled_todo = [], []
    for name, (config, *_rest) in settings(dry_run).items():
        for precision in precisions(name, dry_run):
            if config is None:
                rows.append({"name": name, "precision": precision, "compile": False,
                             "skipped": f"model.name={name.split('-')[0]} is not built yet"})
            else:
                todo.append(f"{name}:{precision}:0")
                if (name, precision) in (DRY_COMPILE if dry_run else GPU_COMPILE):
                    compiled_todo.append(f"{name}:{precision}:1")
    todo += compiled_todo  # last: building the graphs costs minutes per setting on a GPU
    groups = [todo] if dry_run else [[item] for item in todo]
    per_item = 60 if dry_run else 180
    for group in groups:
        left = deadline - time.monotonic()
        if left < 15:
            rows += [{**_item(item), "skipped": f"out of the time budget ({left:.0f} s left)"} for item in group]
            continue
        command = [sys.executable, __file__, "--data-root", str(data_root), *(["--dry-run"] if dry_run else []),
                   "--bench", *group]
        limit = min(per_item * len(group), left)
        try:
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=limit,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
            stdout, failure = result.stdout, ""
            if result.returncode:
                last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
                failure = f"exit {result.returncode}: {last[0][:300]}"
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            failure = f"stopped after {limit:.0f} s"
        lines = [x for x in stdout.splitlines() if x.startswith("{")]
        done = {(r["name"], r["precision"], r["compile"]): r for r in map(json.loads, lines)}
        for item in group:
            key = _item(item)
            row = done.get(tuple(key.values())) or {**key, "error": failure or "no figures printed"}
            rows.append(row)
            print(f"gpu_check: {item}: {_figure(row)}", flush=True)
    order = {name: i for i, name in enumerate(settings(dry_run))}
    return sorted(rows, key=lambda r: (order[r["name"]], r["compile"]))


def _item(item: str) -> dict:
    name, precision, compiled = item.split(":")
    return {"name": name, "precision": precision, "compile": compiled == "1"}


def _figure(row: dict) -> str:
    if "img_per_sec" in row:
        return f"{row['img_per_sec']} img/s, {row['sec_per_kimg']} s/kimg, peak {row['peak_mem_mib']} MiB"
    return row.get("skipped") or row.get("error", "?")


# ----------------------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# gantrain GPU check ({'dry run on CPU' if report['dry_run'] else 'GPU'})", "",
             f"- date: {m['date']}; commit {m.get('commit')}", f"- device: {m.get('device')}"
             + (f" (capability {m['capability']}, {m['memory_gib']} GiB, {m['multiprocessors']} SMs)"
                if m.get("capability") else ""),
             f"- torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m.get('cudnn')}, NCCL {m.get('nccl')}, "
             f"Python {m['python']}",
             "- packages: " + ", ".join(f"{k} {v or 'absent'}" for k, v in m["packages"].items()),
             f"- wall time: {report['seconds']} s (budget {report['budget_s']} s)", ""]
    t = report["tests"]
    lines += [f"## Tests: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped ({t['seconds']} s, "
              f"exit {t['rc']})", "", "| test | outcome | s | message |", "| --- | --- | --- | --- |"]
    lines += [f"| {c['test']} | {c['outcome']} | {c['seconds']:.1f} | {c['message'].replace('|', '/')} |"
              for c in t["cases"]]
    lines += ["", "## Training steps (img/s, s/kimg, peak memory)", "",
              "| setting | precision | compile | resolution | batch | img/s | s/kimg | peak MiB | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["benchmarks"]:
        if "img_per_sec" in r:
            note = "" if r["weights_finite"] else "NON-FINITE WEIGHTS"
            if r["compile"]:
                note += f" warm-up incl. compiling: {r['warmup_s']} s"
            lines.append(f"| {r['name']} | {r['precision']} | {'yes' if r['compile'] else 'no'} | {r['resolution']} | "
                         f"{r['batch']} | {r['img_per_sec']} | {r['sec_per_kimg']} | {r['peak_mem_mib']} | {note} |")
        else:
            note = r.get("skipped") or r.get("error")
            lines.append(f"| {r['name']} | {r['precision']} | {'yes' if r['compile'] else 'no'} | | | | | | {note} |")
    a = report["anchor"]
    lines += ["", f"Published anchor: {a['source']}: {a['sec_per_kimg']} s/kimg on {a['device']}."]
    ours = [r for r in report["benchmarks"] if r["name"] == a["name"] and "sec_per_kimg" in r]
    lines += [f"- gantrain {r['precision']}: {r['sec_per_kimg']} s/kimg, {a['sec_per_kimg'] / r['sec_per_kimg']:.2f}x "
              "the anchor's speed" for r in ours]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", help="directory for gpu-report.json / .md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (what CI runs)")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-time budget (480 on a GPU, 150 dry)")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmarks")
    parser.add_argument("--bench", nargs="+", metavar="NAME:PRECISION", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bench:  # the benchmark process: one JSON line per setting
        for item in args.bench:
            key = _item(item)
            print(json.dumps(bench_one(key["name"], key["precision"], key["compile"], args.dry_run,
                                       Path(args.data_root))), flush=True)
        return 0
    if not args.out:
        parser.error("OUT_DIR is required")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; use --dry-run on CPU", file=sys.stderr)
        return 2
    budget = args.budget_s or (150.0 if args.dry_run else 480.0)
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "budget_s": budget, "machine": machine(), "anchor": ANCHOR}
    print(f"gpu_check: {report['machine']['device']}, torch {report['machine']['torch']}", flush=True)
    test_share = 0.65 if args.dry_run else 0.4
    report["tests"] = {"rc": "not run", "seconds": 0, "cases": [], "passed": 0, "failed": 0, "skipped": 0} \
        if args.skip_tests else run_tests(out, args.dry_run, budget * test_share)
    t = report["tests"]
    print(f"gpu_check: tests {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped "
          f"({t['seconds']} s)", flush=True)
    report["benchmarks"] = run_benchmarks(out, args.dry_run, start + budget)
    report["seconds"] = round(time.monotonic() - start, 1)
    (out / "gpu-report.json").write_text(json.dumps(report, indent=1))
    (out / "gpu-report.md").write_text(markdown(report))
    print(f"gpu_check: report in {out / 'gpu-report.md'} ({report['seconds']} s)", flush=True)
    return 1 if t["failed"] or t["rc"] == "timeout" else 0


if __name__ == "__main__":
    sys.exit(main())
