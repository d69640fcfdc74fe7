"""t-SNE plot: a PNG of labeled features (skipped without scikit-learn)."""

import pytest
import torch
from PIL import Image

from mimkit.eval.tsne import TsneOptions, save_tsne


def test_writes_png(tmp_path):
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    features = torch.eye(3, 64)[labels] * 4 + torch.randn(120, 64, generator=g)
    out = save_tsne(
        features,
        labels,
        tmp_path / "sub" / "tsne.png",
        ["a", "b", "c"],
        options=TsneOptions(max_points=90, max_iter=250),
        title="t",
    )
    assert out == tmp_path / "sub" / "tsne.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_unlabeled_rejected(tmp_path):
    with pytest.raises(ValueError, match="labeled"):
        save_tsne(torch.randn(10, 4), torch.full((10,), -1), tmp_path / "x.png")


def test_missing_sklearn_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        save_tsne(torch.randn(10, 4), torch.arange(10) % 2, tmp_path / "x.png")
