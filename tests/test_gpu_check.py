"""scripts/gpu_check.sh --dry-run: the whole GPU check on CPU at tiny sizes, so the script never rots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_dry_run_writes_a_full_report(tmp_path):
    out = tmp_path / "report"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("GANTRAIN_TEST_DEVICE", None)  # the script sets it for its own tests
    result = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", str(out),
                             "--wheels", str(tmp_path / "no-wheels")], capture_output=True, text=True, env=env,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu-report.json").read_text())
    assert report["dry_run"] and report["machine"]["torch"]
    tests = report["tests"]
    # Every gpu-marked test ran on CPU and passed, but those that need CUDA itself (SyncBatchNorm,
    # the accelerate launcher), which say so.
    assert tests["failed"] == 0, tests
    passed = {c["test"].split("::")[1].split("[")[0] for c in tests["cases"] if c["outcome"] == "passed"}
    import test_cuda

    expected = {name for name in dir(test_cuda) if name.startswith("test_") and "accelerate" not in name}
    assert passed >= expected, expected - passed
    skipped = [c for c in tests["cases"] if c["outcome"] == "skipped"]
    assert all("CUDA" in c["message"] or "accelerate" in c["message"] for c in skipped), skipped
    timed = [r for r in report["benchmarks"] if "img_per_sec" in r]
    assert {r["name"] for r in timed} == {"dcgan-16", "progan-16-stabilize", "stylegan2-16", "stylegan2-16-ada",
                                          "biggan-32"}
    assert {r["precision"] for r in timed} == {"fp32", "bf16", "fp16"}
    assert all(r["img_per_sec"] > 0 and r["weights_finite"] for r in timed)
    assert [(r["name"], r["precision"]) for r in timed if r["compile"]] == [("dcgan-16", "fp32")]
    table = (out / "gpu-report.md").read_text()
    assert "| dcgan-16 | fp32 | no | 16 | 8 |" in table and "Published anchor" in table
    assert "gpu_check: report in" in result.stdout
