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
