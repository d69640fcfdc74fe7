"""mimkit's ViT and Swin against timm's, weight for weight (skipped where timm does not import).

timm is not a dependency (it needs torchvision, which CI's CPU torch cannot import next to it); where it
is installed, a timm model's state dict must load into the mimkit encoder of the same shape, strictly,
and both must compute the same features.
"""

import pytest
import torch

from mimkit import create_encoder, load_weights

try:
    import timm
except Exception as err:  # ImportError, or torchvision failing to import inside timm
    pytest.skip(f"timm does not import here ({type(err).__name__})", allow_module_level=True)


def _same_features(theirs, ours, x, to_tokens=lambda f: f):
    theirs.eval(), ours.eval()
    with torch.no_grad():
        expected = to_tokens(theirs.forward_features(x))
        got = ours.forward_features(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_timm_vit_weights_give_the_same_features(tmp_path):
    torch.manual_seed(0)
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64)
    torch.save(theirs.state_dict(), tmp_path / "vit.pth")
    ours = create_encoder("vit_tiny_patch16", img_size=64, num_classes=10)
    load_weights(ours, tmp_path / "vit.pth")  # strict: every name and shape must match
    x = torch.randn(2, 3, 64, 64)
    _same_features(theirs, ours, x)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)  # cls token + head


def test_timm_swin_weights_give_the_same_features(tmp_path):
    torch.manual_seed(0)
    theirs = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0)
    torch.save(theirs.state_dict(), tmp_path / "swin.pth")
    ours = create_encoder("swin_tiny_patch4_window7_224")
    load_weights(ours, tmp_path / "swin.pth")
    x = torch.randn(2, 3, 224, 224)

    def tokens(f):  # timm >= 0.9 returns [N, H, W, C]
        return f.flatten(1, 2) if f.ndim == 4 else f

    _same_features(theirs, ours, x, tokens)
