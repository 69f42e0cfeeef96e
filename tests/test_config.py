import re
from pathlib import Path

import pytest
import yaml

from lista_cli.config import Config, ConfigError, load_config, valid_keys

DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def test_default_yaml_mirrors_dataclasses_with_comments():
    assert yaml.safe_load(DEFAULT.read_text()) == Config().to_dict()
    lines = [ln for ln in DEFAULT.read_text().splitlines() if re.match(r"^  \w+:", ln)]
    assert len(lines) == len(valid_keys())
    for line in lines:
        assert re.search(r"# \([a-z|\[\]]+\) \S", line), f"no '# (type) meaning' comment: {line}"


def test_precedence_defaults_file_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 7\n  lr: 0.01\n")
    cfg = load_config(path, ["train.lr=3e-4", "data.image_size=null"])
    assert cfg.train.steps == 7
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.image_size is None
    assert cfg.model.layers == Config().model.layers


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.stpes=3", "unknown config key 'train.stpes'; did you mean 'train.steps'?"),
        ("modle.layers=3", "did you mean 'model.layers'"),
        ("train.steps=abc", "train.steps must be an integer, got 'abc'"),
        ("model.layer=dense", "model.layer must be one of full, cp, alista"),
        ("model.energy=1.5", "model.energy must be < 1.0"),
        ("patch.stride=9", "patch.stride (9) must be <= patch.size (8)"),
        ("model.learn=maybe", "model.learn must be true or false"),
        ("cutpaste.area=[0.2]", "cutpaste.area must be a list of 2 numbers"),
        ("data.scales=[2]", "data.scales must start at 1 and increase"),
        ("data.scales=[1,2,2]", "data.scales must start at 1 and increase"),
        ("data.scales=[]", "data.scales must be a list of numbers"),
        ("data.scales=[1,0]", "data.scales must be >= 1"),
        ("model.background=patch", "model.background must be one of global, image, both"),
        ("train.lr", "--set expects key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: 3\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_config(path)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("score:\n  smooth_sigm: 1\n")
    with pytest.raises(ConfigError, match="did you mean 'score.smooth_sigma'"):
        load_config(path)
