"""The cluster definitions in cluster/: Ray's own schema for the `ray up` YAML, the fields gantrain relies
on for the KubeRay RayJob, and entrypoints that parse as gantrain command lines."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from gantrain.cli import build_parser

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def test_ray_up_yaml_passes_rays_schema_and_installs_a_cuda_torch_first():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    prepared = prepare_config(config)  # Ray's defaults for what the file leaves out (as `ray up` does)
    validate_config(prepared)  # Ray's JSON schema and node-type checks; raises on a violation
    assert prepared["head_node_type"] in prepared["available_node_types"]
    workers = [t for name, t in prepared["available_node_types"].items() if name != prepared["head_node_type"]]
    assert any("g5" in t["node_config"]["InstanceType"] for t in workers)  # GPU workers
    assert all(t["max_workers"] > t.get("min_workers", 0) for t in workers)  # they autoscale
    setup = prepared["setup_commands"]
    torch_step = next(i for i, c in enumerate(setup) if "torch==" in c)
    gantrain_step = next(i for i, c in enumerate(setup) if "~/gantrain[" in c)
    assert torch_step < gantrain_step and "download.pytorch.org/whl/cu" in setup[torch_step]
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # the Jobs API is not exposed


def test_rayjob_manifest_has_what_gantrain_relies_on():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "gantrain"
    args = build_parser().parse_known_args(argv[1:])[0]
    assert args.command == "train" and args.ray and args.workers >= 1 and args.address == "auto"
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu_groups and sum(g["replicas"] for g in gpu_groups) >= args.workers
    assert spec["shutdownAfterJobFinishes"] is True


def test_runtime_env_keeps_data_and_runs_out_of_the_upload():
    env = yaml.safe_load((CLUSTER / "runtime-env.yaml").read_text())
    assert env["working_dir"] == "." and {"runs/", "data/", ".venv/"} <= set(env["excludes"])
