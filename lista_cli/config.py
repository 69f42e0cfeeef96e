"""Typed configuration: defaults -> YAML file -> dotted `key=value` overrides.

The dataclasses below are the source of truth for defaults; `configs/default.yaml`
mirrors them with a comment per key (a test keeps the two equal). Every value is
checked in one place, `validate`, and every problem is a `ConfigError` with one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ListaError


class ConfigError(ListaError):
    """A configuration problem, printed as one line (exit code 1)."""


def _opt(default: Any, **rules: Any) -> Any:
    """A field with a default and validation rules (choices / low / high / length)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class DataConfig:
    image_size: int | str | None = _opt("auto", low=8, high=4096, keywords=("auto",))
    channels: str = _opt("auto", choices=("auto", "gray", "rgb"))
    tile_size: int = _opt(1024, low=64)
    scales: list[int] = _opt([1, 2, 4, 8], low=1, high=16)


@dataclass
class PatchConfig:
    size: int = _opt(6, low=2, high=64)
    stride: int = _opt(3, low=1, high=64)


@dataclass
class ModelConfig:
    layer_type: str = _opt("cp", choices=("full", "cp", "alista"))
    layers: int = _opt(3, low=1, high=10000)
    energy: float = _opt(0.7, low=0.0, high=1.0, open_low=True, open_high=True)
    max_rank: int | None = _opt(None, low=1)
    step: float = _opt(1.0, low=0.0, high=1.0, open_low=True)
    lam: float = _opt(1.0, low=0.0, open_low=True)
    relative_threshold: bool = _opt(True)
    fista: bool = _opt(False)
    learn: bool = _opt(True)
    background: str = _opt("global", choices=("global", "image", "both"))
    image_rank_threshold: float = _opt(0.03, low=0.0, high=1.0, open_low=True, open_high=True)


@dataclass
class TrainConfig:
    steps: int = _opt(300, low=0)
    batch: int = _opt(16, low=1)
    crop: int = _opt(64, low=8)
    patches_per_crop: int = _opt(64, low=1)
    lr: float = _opt(1e-3, low=0.0, open_low=True)
    weight_decay: float = _opt(0.0, low=0.0)
    beta: float = _opt(0.1, low=0.0)
    cutpaste_share: float = _opt(0.5, low=0.0, high=1.0)
    defects: str = _opt("all", choices=("cutpaste", "all"))
    holdout: float = _opt(0.2, low=0.0, high=0.9, open_low=True)
    val_every: int = _opt(25, low=1)
    validation_defects: str = _opt("all", choices=("all", "both", "drawn", "cutpaste"))
    seed: int = _opt(0, low=0)
    threads: int = _opt(0, low=0)


@dataclass
class CutPasteConfig:
    area: list[float] = _opt([0.02, 0.15], length=2, low=0.0, high=1.0)
    aspect: list[float] = _opt([0.3, 3.3], length=2, low=0.01)
    scar_share: float = _opt(0.5, low=0.0, high=1.0)
    scar_width: list[float] = _opt([2.0, 16.0], length=2, low=0.5)
    scar_length: list[float] = _opt([10.0, 25.0], length=2, low=1.0)
    scar_angle: float = _opt(45.0, low=0.0, high=180.0)
    reference_size: int = _opt(256, low=8)
    jitter: float = _opt(0.1, low=0.0, high=1.0)


@dataclass
class ScoreConfig:
    smooth_sigma: float = _opt(2.0, low=0.0)
    code_smooth_sigma: float = _opt(4.0, low=0.0)
    image_score: str = _opt("max", choices=("max", "topk"))
    top_k: float = _opt(0.01, low=0.0, high=1.0, open_low=True)
    threshold_quantile: float = _opt(0.75, low=0.0, high=1.0)
    threshold_margin: float = _opt(1.5, low=0.0, open_low=True)
    min_region: int = _opt(0, low=0)
    bank_size: int = _opt(2048, low=0)
    code_energy: float = _opt(0.97, low=0.0, high=1.0, open_low=True, open_high=True)
    sparse_share: float | None = _opt(None, low=0.0, high=1.0)
    residual_weight: float | None = _opt(None, low=0.0)
    sparse_smoothing: str = _opt("auto", choices=("auto", "gaussian", "oriented"))
    level_damping: bool = _opt(True)
    sparse_damping: bool = _opt(True)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cutpaste: CutPasteConfig = field(default_factory=CutPasteConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys given clearer names. The old name still works in a config file or --set, with a
# warning; in a checkpoint's stored config (written by an older lista) it is read silently.
RENAMED_KEYS = {
    "model.layer": "model.layer_type",
    "model.image_threshold": "model.image_rank_threshold",
    "train.patches_per_image": "train.patches_per_crop",
}


def current_key(key: str, where: str | None) -> str:
    """The key's current name; warns (FutureWarning) naming `where` for an old one, unless
    `where` is None."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    if where is not None:
        warnings.warn(f"{where}: config key {key} is now {new} (the old name will be removed)", FutureWarning, 3)
    return new


def _sections() -> dict[str, type]:
    """Section name -> its dataclass, e.g. 'train' -> TrainConfig."""
    return typing.get_type_hints(Config)


def valid_keys() -> list[str]:
    """Every dotted key, e.g. 'train.lr'."""
    return [f"{section}.{f.name}" for section, cls in _sections().items() for f in dataclasses.fields(cls)]


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, kind: Any, rules: dict[str, Any]) -> Any:
    """Check `value` against the annotated type and rules; return it in canonical form."""
    if value in rules.get("keywords", ()):
        return value
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
        if rules.get("keywords"):  # int | str | None: a number or one of the keywords
            if isinstance(value, str):
                raise ConfigError(f"{key} must be an integer, {' or '.join(rules['keywords'])} or null, got {value!r}")
            kind = int
    if typing.get_origin(kind) is list:
        length = rules.get("length")
        if not isinstance(value, list) or (length and len(value) != length) or not value:
            count = f"{length} " if length else ""
            raise ConfigError(f"{key} must be a list of {count}numbers, got {value!r}")
        items = [_coerce(key, v, typing.get_args(kind)[0], {**rules, "length": None}) for v in value]
        if length == 2 and items[0] > items[1]:
            raise ConfigError(f"{key} must be [low, high] with low <= high, got {value!r}")
        return items
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
    choices = rules.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    low, high = rules.get("low"), rules.get("high")
    if low is not None and (value < low or (rules.get("open_low") and value == low)):
        sign = ">" if rules.get("open_low") else ">="
        raise ConfigError(f"{key} must be {sign} {low}, got {value!r}")
    if high is not None and (value > high or (rules.get("open_high") and value == high)):
        sign = "<" if rules.get("open_high") else "<="
        raise ConfigError(f"{key} must be {sign} {high}, got {value!r}")
    return value


def _merge(target: dict[str, Any], updates: Any, where: str, warn: bool = True) -> None:
    if not isinstance(updates, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(updates).__name__}")
    for section, values in updates.items():
        if section not in target:
            raise _unknown(str(section))
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping, got {values!r}")
        for key, value in values.items():
            _set(target, f"{section}.{key}", value, where if warn else None)


def _set(target: dict[str, Any], key: str, value: Any, where: str | None) -> None:
    section, _, name = current_key(key, where).partition(".")
    if section not in target or name not in target[section]:
        raise _unknown(key)
    target[section][name] = value


def from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (missing keys take defaults; keys
    renamed since it was written are read under their new names)."""
    merged = Config().to_dict()
    _merge(merged, values, "config", warn=False)
    return validate(merged)


def validate(values: dict[str, Any]) -> Config:
    sections = {}
    for section, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        checked = {
            f.name: _coerce(f"{section}.{f.name}", values[section][f.name], hints[f.name], dict(f.metadata))
            for f in dataclasses.fields(cls)
        }
        sections[section] = cls(**checked)
    config = Config(**sections)
    if config.patch.stride > config.patch.size:
        raise ConfigError(
            f"patch.stride ({config.patch.stride}) must be <= patch.size ({config.patch.size}),"
            " or some pixels are never covered"
        )
    scales = config.data.scales
    if scales[0] != 1 or any(b <= a for a, b in zip(scales, scales[1:], strict=False)):
        raise ConfigError(f"data.scales must start at 1 and increase, e.g. [1, 2], got {scales!r}")
    if isinstance(config.data.image_size, int) and config.data.image_size < config.patch.size:
        raise ConfigError(f"data.image_size must be >= patch.size ({config.patch.size})")
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003), the value parsed by yaml.safe_load."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    # YAML 1.1 reads 3e-4 as a string; accept it as the number a user meant.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    return data or {}


def load_config(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """defaults -> YAML file -> `key=value` overrides, validated."""
    merged = Config().to_dict()
    if path is not None:
        _merge(merged, read_yaml(path), str(path))
    for text in overrides:
        key, value = parse_override(text)
        _set(merged, key, value, "--set")
    return validate(merged)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
