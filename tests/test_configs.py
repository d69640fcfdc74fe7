"""Every shipped recipe parses, names real encoders/methods, and builds its model."""

from pathlib import Path

import pytest

from mimkit.engine import load_config
from mimkit.pretrain import build_method

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


def test_there_are_recipes():
    assert len(CONFIGS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_builds(path):
    header = path.read_text().splitlines()[:4]
    assert any("pretrain --config" in line for line in header), "the header must give the command"
    cfg = load_config(path)
    if "imagenet" in path.name or "224" in path.name:  # keep the check cheap: same architecture, fewer blocks
        shallower = "encoder.depth=2" if cfg.encoder["name"].startswith("vit") else "encoder.depths=[2,2,2,2]"
        cfg = load_config(path, [shallower])
    method = build_method(cfg)
    assert sum(p.numel() for p in method.parameters()) > 0
