import dataclasses
import math
from typing import Optional

import pytest

from mimkit.engine.config import PretrainConfig, TrainConfig, _build, load_config, parse_overrides
from mimkit.engine.schedule import cosine_lr


def test_cosine_lr_hand_values():
    base, total, warm = 1.0, 110, 10
    assert cosine_lr(0, base, total, warm) == 0.0
    assert cosine_lr(5, base, total, warm) == pytest.approx(0.5)
    assert cosine_lr(10, base, total, warm) == pytest.approx(1.0)
    assert cosine_lr(60, base, total, warm) == pytest.approx(0.5)  # half-way through the cosine
    assert cosine_lr(110, base, total, warm) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(35, base, total, warm, min_lr=0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))
    )


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "encoder: {name: vit_tiny_patch4_28, depth: 6}\nmethod: {name: mae}\ntrain: {epochs: 3}\n"
    )
    cfg = load_config(path, ["train.epochs=5", "method.mask_ratio=0.6", "encoder.img_size=[28, 28]"])
    assert isinstance(cfg, PretrainConfig) and isinstance(cfg.train, TrainConfig)
    assert cfg.train.epochs == 5 and cfg.method == {"name": "mae", "mask_ratio": 0.6}
    assert cfg.encoder == {"name": "vit_tiny_patch4_28", "depth": 6, "img_size": [28, 28]}


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ValueError, match="unknown config key 'train.epoch'; did you mean 'train.epochs'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ValueError, match="unknown config key 'trian'"):
        load_config(None, ["trian.epochs=3"])


def test_bad_values_named():
    with pytest.raises(ValueError, match="train.precision must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ValueError, match="train.strategy must be one of ddp, fsdp, got 'zero3'"):
        load_config(None, ["train.strategy=zero3"])
    for bad in ("0", "-1", "abc", "true"):  # a budget must be a positive number: one line naming the key
        with pytest.raises(ValueError, match="train.max_minutes.? must be a number"):
            load_config(None, [f"train.max_minutes={bad}"])
    with pytest.raises(ValueError, match="train.epochs must be a positive integer, got 0"):
        load_config(None, ["train.epochs=0"])
    with pytest.raises(ValueError, match="not of the form"):
        parse_overrides(["train.epochs"])
    for broken in ("train.betas=[0.9,", "train.betas={a: [1}"):  # not YAML: one error naming the override
        with pytest.raises(ValueError, match=r"override 'train\.betas=.*': the value is not valid YAML"):
            parse_overrides([broken])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def test_exponent_floats_without_a_dot(tmp_path):
    # YAML 1.1 (PyYAML) reads "1e-3" as a string; users write it everywhere, so it must be the float 0.001
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  blr: 2e-4\n  min_lr: 1E-6\nmethod:\n  name: mae\n  mask_ratio: 75e-2\n")
    cfg = load_config(path, ["train.weight_decay=5e-2", "train.warmup_epochs=2"])
    assert cfg.train.blr == 2e-4 and cfg.train.min_lr == 1e-6 and cfg.train.weight_decay == 0.05
    assert cfg.method["mask_ratio"] == 0.75
    assert isinstance(cfg.train.warmup_epochs, float)  # an int given to a float field is a float
    assert parse_overrides(["a=1e3", "b=1.5e-4", "c=e3", "d=1e", "e=[1e-3, 2]"]) == {
        "a": 1000.0,
        "b": 1.5e-4,
        "c": "e3",
        "d": "1e",
        "e": [1e-3, 2],
    }


@pytest.mark.parametrize("override", ["train.blr=abc", "train.lr=[1]", "train.min_lr=true"])
def test_non_number_in_a_float_field_is_named(override):
    with pytest.raises(ValueError, match=f"config key '{override.split('=')[0]}' must be a number"):
        load_config(None, [override])


@dataclasses.dataclass
class _Inner:
    rate: Optional[float] = None  # noqa: UP045 - the old spelling is the case under test
    scale: float | None = 1.0


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    lr: float = 0.1
    name: str = "x"


def test_float_fields_found_by_type_not_by_spelling():
    cfg = _build(_Outer, {"inner": {"rate": 2, "scale": None}, "lr": 3, "name": "1e-3"}, "")
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float) and cfg.inner.scale is None
    assert isinstance(cfg.lr, float) and cfg.name == "1e-3"  # a str field keeps its string
    for values, key in (({"inner": {"rate": "fast"}}, "inner.rate"), ({"lr": None}, "lr")):
        with pytest.raises(ValueError, match=f"config key '{key}' must be a number"):
            _build(_Outer, values, "")
