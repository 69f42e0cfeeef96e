import re
import warnings
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
        ("model.layer_type=dense", "model.layer_type must be one of full, cp, alista"),
        ("model.energy=1.5", "model.energy must be < 1.0"),
        ("patch.stride=9", f"patch.stride (9) must be <= patch.size ({Config().patch.size})"),
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


def test_renamed_keys_still_work_with_a_warning(tmp_path):
    """Old names in a config file or --set: used under the new name, one warning line each;
    in a checkpoint's stored config: read silently."""
    from typer.testing import CliRunner

    from lista_cli.cli import app
    from lista_cli.config import RENAMED_KEYS, from_dict

    old_file = tmp_path / "old.yaml"
    old_file.write_text("model:\n  layer: full\n  image_threshold: 0.05\n")
    with pytest.warns(FutureWarning) as record:
        cfg = load_config(old_file, ["train.patches_per_image=7"])
    assert sorted(str(w.message).split(": config key ")[1] for w in record) == [
        f"{old} is now {RENAMED_KEYS[old]} (the old name will be removed)"
        for old in ("model.image_threshold", "model.layer", "train.patches_per_image")
    ]
    assert (cfg.model.layer_type, cfg.model.image_rank_threshold, cfg.train.patches_per_crop) == ("full", 0.05, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = from_dict({"model": {"layer": "alista"}, "train": {"patches_per_image": 9}})
    assert stored.model.layer_type == "alista" and stored.train.patches_per_crop == 9
    result = CliRunner().invoke(app, ["config", "--config", str(old_file), "--set", "train.patches_per_image=5"])
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert lines == [
        f"warning: {where}: config key {old} is now {RENAMED_KEYS[old]} (the old name will be removed)"
        for where, old in (
            (old_file, "model.layer"),
            (old_file, "model.image_threshold"),
            ("--set", "train.patches_per_image"),
        )
    ]
    assert "layer_type: full" in result.output and "patches_per_crop: 5" in result.output
