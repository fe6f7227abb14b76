import dataclasses
from pathlib import Path

import pytest
import yaml

from gantrain import config as config_mod
from gantrain.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_every_bundled_config_loads():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config_mod.load(path)


def test_overrides_are_typed():
    cfg = config_mod.load(REPO / "configs/quickstart.yaml",
                          ["train.kimg=2", "model.channels=64", "train.ema_rampup=null", "optim.betas=[0.0,0.99]"])
    assert cfg.train.kimg == 2.0 and isinstance(cfg.train.kimg, float)
    assert cfg.model.channels == 64
    assert cfg.train.ema_rampup is None
    assert cfg.optim.betas == [0.0, 0.99]


def _error(tmp_path, text, overrides=()):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return info.value.key, message


def test_unknown_key_names_it_and_suggests(tmp_path):
    key, message = _error(tmp_path, "data: {path: x}\ntrain: {kimgg: 3}\n")
    assert key == "train.kimgg"
    assert "did you mean 'train.kimg'" in message


def test_unknown_section_and_override_typo(tmp_path):
    key, message = _error(tmp_path, "data: {path: x}\ntrian: {kimg: 3}\n")
    assert key == "trian" and "did you mean 'train'" in message
    key, message = _error(tmp_path, "data: {path: x}\n", ["model.chanels=8"])
    assert key == "model.chanels" and "did you mean 'model.channels'" in message


def test_wrong_types(tmp_path):
    key, message = _error(tmp_path, "data: {path: x}\ntrain: {batch: 3.5}\n")
    assert key == "train.batch" and "integer" in message
    key, message = _error(tmp_path, "data: {path: x}\n", ["train.kimg=abc"])
    assert key == "train.kimg" and "number" in message
    key, message = _error(tmp_path, "data: {path: x}\nlog: {progress: 1}\n")
    assert key == "log.progress" and "true or false" in message
    key, message = _error(tmp_path, "data: {path: x}\nloss: {name: hinj}\n")
    assert key == "loss.name" and "nonsaturating" in message


def test_impossible_values(tmp_path):
    key, message = _error(tmp_path, "data: {path: x}\ntrain: {batch: 16, micro_batch: 5}\n")
    assert key == "train.micro_batch" and "divide" in message
    key, _ = _error(tmp_path, "data: {path: x}\ntrain: {kimg: -1}\n")
    assert key == "train.kimg"
    key, _ = _error(tmp_path, "data: {path: x}\nmodel: {resolution: 24}\n")
    assert key == "model.resolution"
    key, message = _error(tmp_path, "data: {path: x}\nmodel: {name: stylegan9}\n")
    assert key == "model.name" and "dcgan" in message
    key, _ = _error(tmp_path, "train: {kimg: 1}\n")
    assert key == "data.path"
    key, message = _error(tmp_path, "data: {path: x, memory_cache_gb: -1}\n")
    assert key == "data.memory_cache_gb" and ">= 0" in message


def test_malformed_yaml_and_override(tmp_path):
    _, message = _error(tmp_path, "data: {path: x\n")
    assert "c.yaml" in message and "YAML" in message
    _, message = _error(tmp_path, "data: {path: x}\n", ["train.kimg"])
    assert "key=value" in message


def test_accumulation_derivation():
    cfg = config_mod.from_dict({"data": {"path": "x"}, "train": {"batch": 64, "micro_batch": 8}})
    assert cfg.train.accumulation(1) == (8, 8)
    assert cfg.train.accumulation(2) == (8, 4)
    with pytest.raises(ConfigError, match="train.micro_batch"):
        config_mod.from_dict({"data": {"path": "x"}, "train": {"batch": 64, "micro_batch": 64}}) \
            .train.accumulation(2)


def test_dump_round_trips():
    cfg = config_mod.load(REPO / "configs/quickstart.yaml")
    assert config_mod.from_dict(yaml.safe_load(config_mod.dump(cfg))) == cfg


def test_lr_scaling_rules():
    optim = config_mod.OptimConfig(base_batch=64)
    assert optim.lr_scale(256) == 1.0
    optim.lr_scaling = "linear"
    assert optim.lr_scale(256) == 4.0
    optim.lr_scaling = "sqrt"
    assert optim.lr_scale(256) == 2.0


def test_cli_takes_overrides_before_and_after_options():
    from gantrain.cli import parse_args

    args = parse_args(["train", "c.yaml", "a.b=1", "--run-dir", "x", "--resume", "auto", "train.kimg=120"])
    assert args.overrides == ["a.b=1", "train.kimg=120"] and args.run_dir == "x" and args.resume == "auto"
    with pytest.raises(SystemExit):
        parse_args(["train", "c.yaml", "--bogus"])
    with pytest.raises(SystemExit):
        parse_args(["pack", "src", "out", "--resolution", "8", "x=1"])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load_and_validate(path):
    cfg = config_mod.load(path)
    assert cfg.data.path or cfg.data.toy.name != "none"


def test_credentials_in_urls_are_masked_where_configs_are_written():
    cfg = config_mod.from_dict({"data": {"path": "data/x"},
                                "ray": {"storage_path": "s3://AKIAEXAMPLE:se/cr+et@bucket.example.com/runs"}})
    text = config_mod.dump(cfg)
    assert "se/cr+et" not in text and "s3://AKIAEXAMPLE:***@bucket.example.com/runs" in text
    assert cfg.ray.storage_path.endswith("se/cr+et@bucket.example.com/runs")  # the live config keeps it
    assert config_mod.redacted(cfg)["data"]["path"] == "data/x"


def test_numbers_as_people_write_them_and_only_finite_ones(tmp_path):
    """YAML 1.1 reads 1e4 and 1E-4 as strings: accepted as numbers in files and overrides; inf/nan refused."""
    path = tmp_path / "c.yaml"
    path.write_text("optim: {g_lr: 1e4, d_lr: 1E-4}\ndata: {path: x}\n")
    cfg = config_mod.load(path, ["optim.betas=[0, 9e-1]", "train.kimg=2e1"])
    assert (cfg.optim.g_lr, cfg.optim.d_lr, cfg.optim.betas, cfg.train.kimg) == (1e4, 1e-4, [0.0, 0.9], 20.0)
    for bad, key in (("train.kimg=.inf", "train.kimg"), ("optim.g_lr=.nan", "optim.g_lr"),
                     ("optim.g_lr=fast", "optim.g_lr")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_mod.load(path, [bad])


def test_eval_metrics_none_turns_evaluation_off(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {path: x}\neval: {metrics: [fid]}\n")
    assert config_mod.load(path, ["eval.metrics=none"]).eval.metrics == []
    assert config_mod.load(path, ["eval.metrics=fid,kid"]).eval.metrics == ["fid", "kid"]


def test_cli_one_line_errors_before_anything_is_created(tmp_path, capsys):
    from gantrain.cli import main as cli_main

    image = tmp_path / "image.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x80binary")
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{path: {tmp_path}}}\n")
    cases = [(["train", str(image)], "image.png"),
             (["train", str(config), "train.kimg=.inf", "--run-dir", str(tmp_path / "r1")], "train.kimg"),
             (["train", str(config), "--nproc", "0", "--run-dir", str(tmp_path / "r2")], "--nproc"),
             (["train", str(tmp_path), "--run-dir", str(tmp_path / "r3")], "is a directory")]
    for argv, culprit in cases:
        capsys.readouterr()
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and culprit in err, err
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3))


def test_version(capsys):
    from gantrain.cli import main as cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("gantrain 0.")


def test_hparams_list_only_what_the_run_reads_in_config_order():
    toy = config_mod.from_dict({"data": {"toy": {"name": "ring"}}, "model": {"name": "mlp"}})
    used = config_mod.in_use(toy)
    assert list(used["data"]) == ["toy"]  # the shard settings are unused by a toy problem
    image = config_mod.from_dict({"data": {"path": "d"}, "progressive": {"enabled": True}, "model": {"name": "progan"},
                                  "loss": {"drift": {"weight": 0.001}}, "engine": {"name": "deepspeed"}})
    used = config_mod.in_use(image, hosts=("ray",))
    assert "toy" not in used["data"] and "progressive" in used and "ray" in used and "eval" not in used
    assert list(used["loss"]) == ["name", "drift"] and "zero_stage" in used["engine"]
    assert list(used) == [k for k in config_mod.redacted(image) if k in used]  # config order
    assert "w_dim" not in used["model"] and "channels" in used["model"]  # StyleGAN2's own keys are not progan's
    style = config_mod.from_dict({"data": {"path": "d"}, "model": {"name": "stylegan2"}})
    assert list(config_mod.in_use(style)["model"]) == [
        "name", "z_dim", "max_channels", "conditional", "spectral_norm", "minibatch_group", "resolution", "w_dim",
        "mapping_layers", "channel_base", "d_architecture", "conv_clamp", "style_mixing", "minibatch_channels",
        "output", "num_fp16_res"]


def test_stylegan2_model_keys_are_validated():
    for override, key in (("model.style_mixing=1.5", "model.style_mixing"), ("model.w_dim=0", "model.w_dim"),
                          ("model.conv_clamp=-1", "model.conv_clamp"), ("model.d_architecture=skip",
                                                                        "model.d_architecture"),
                          ("model.conditioning=acgan", "model.conditioning")):
        tree = {"data": {"path": "d"}, "model": {"name": "stylegan2", "conditional": True}}
        config_mod.apply_override(tree, override)
        with pytest.raises(ConfigError) as info:
            config_mod.from_dict(tree)
        assert info.value.key == key, (override, info.value)


def test_relative_paths_resolve_against_the_command_directory_for_ray_workers_and_jobs(tmp_path, monkeypatch):
    from gantrain.ray_jobs import EXCLUDES, job_paths, uploaded

    cfg = config_mod.from_dict({"data": {"path": "data/set"}, "eval": {"metrics": ["fid"], "extractor": "classifier",
                                "extractor_path": "clf/c.safetensors", "cache_dir": "/abs/cache"},
                                "ray": {"storage_path": "s3://bucket/ray"}})
    assert config_mod.relative_paths(cfg) == {"data.path": "data/set", "eval.extractor_path": "clf/c.safetensors"}
    absolute = config_mod.absolute_paths(cfg, tmp_path)
    assert absolute.data.path == str(tmp_path / "data" / "set")
    assert absolute.eval.extractor_path == str(tmp_path / "clf" / "c.safetensors")
    assert absolute.eval.cache_dir == "/abs/cache" and absolute.ray.storage_path == "s3://bucket/ray"
    assert cfg.data.path == "data/set"  # the original is untouched

    # a job runs in the uploaded copy of its working_dir: what travels with it stays relative, what does not
    # (data/ is excluded by default, anything outside) becomes absolute with a note; the run dir is absolute
    work = tmp_path / "work"
    (work / "clf").mkdir(parents=True)
    monkeypatch.chdir(work)
    overrides, run_dir, notes = job_paths(cfg.replace(eval=dataclasses.replace(cfg.eval, cache_dir="cache/f")),
                                          "runs/x", work, list(EXCLUDES))
    assert overrides == [f"data.path={work / 'data' / 'set'}",  # data/ and *.safetensors are not uploaded
                         f"eval.extractor_path={work / 'clf' / 'c.safetensors'}", "eval.cache_dir=cache/f"]
    assert run_dir == str(work / "runs" / "x")
    assert len(notes) == 2 and notes[0].startswith("data.path: data/set is not uploaded with the job; it reads ")
    overrides, _, notes = job_paths(cfg, "r", None, [])  # no working_dir uploaded: everything absolute
    assert overrides == [f"data.path={work / 'data' / 'set'}", f"eval.extractor_path={work / 'clf/c.safetensors'}"]
    assert len(notes) == 2
    assert not uploaded(work / "x" / "model.pt", work, ["*.pt"]) and uploaded(work / "x" / "m.yaml", work, ["*.pt"])
    assert not uploaded(tmp_path / "elsewhere", work, []) and not uploaded(work / "a/.venv/b", work, [".venv/"])
