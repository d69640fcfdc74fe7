"""Two-view augmentation on the device (kornia): shapes, normalisation round trip, channel handling."""

import kornia.augmentation as K
import pytest
import torch

from mimkit.methods.views import TwoViewAugment, default_blur_kernel

# Photometric steps off: only crop and flip remain.
_GEOMETRY_ONLY = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def test_two_views_have_the_input_shape_and_differ():
    torch.manual_seed(0)
    aug = TwoViewAugment((28, 28), 1)
    x = torch.randn(16, 1, 28, 28)
    v1, v2 = aug(x)
    assert v1.shape == v2.shape == x.shape
    assert v1.dtype == v2.dtype == torch.float32
    assert torch.isfinite(v1).all() and torch.isfinite(v2).all()
    assert not torch.allclose(v1, v2) and not torch.allclose(v1, x)


def test_non_square_views():
    aug = TwoViewAugment((24, 32), 3)
    v1, v2 = aug(torch.randn(4, 3, 24, 32))
    assert v1.shape == v2.shape == (4, 3, 24, 32)


def test_constant_images_survive_crop_and_flip_exactly():
    # A constant image stays constant under any crop / flip: checks the un-normalise / re-normalise map.
    values = torch.tensor([-1.3, 0.0, 2.1]).view(3, 1, 1, 1)
    x = values.expand(3, 2, 12, 12).clone()
    for mean, std in ((None, None), ([0.3, 0.6], [0.2, 0.5])):
        aug = TwoViewAugment((12, 12), 2, mean=mean, std=std, **_GEOMETRY_ONLY)
        for view in aug(x):
            assert torch.allclose(view, x, atol=1e-5)


def test_solarise_in_pixel_space_worked_by_hand():
    # mean 0.5, std 0.25: normalised z is the pixel 0.5 + 0.25 z. Solarise (threshold 0.5) maps
    # pixel 0.6 (z = 0.4) to 0.4 (z = -0.4) and leaves pixel 0.25 (z = -1) alone. (Mapping with the
    # batch's min / max instead of the given statistics would give -1 for both.)
    aug = TwoViewAugment((8, 8), 1, mean=0.5, std=0.25, jitter_p=0.0, blur_p=0.0, solarize_p=1.0)
    x = torch.stack([torch.full((1, 8, 8), 0.4), torch.full((1, 8, 8), -1.0)])
    expected = torch.stack([torch.full((1, 8, 8), -0.4), torch.full((1, 8, 8), -1.0)])
    for view in aug(x):
        assert torch.allclose(view, expected, atol=1e-5)


def test_rgb_only_steps_depend_on_channels():
    def has_grayscale(aug):
        return any(isinstance(step, K.RandomGrayscale) for step in (*aug.view1, *aug.view2))

    assert has_grayscale(TwoViewAugment((16, 16), 3))
    grey = TwoViewAugment((16, 16), 1)
    assert not has_grayscale(grey)
    jitter = next(step for step in grey.view1 if isinstance(step, K.ColorJitter))
    assert jitter.saturation == 0.0 and jitter.hue == 0.0
    # 1 and 4 channels run (brightness / contrast only).
    for c in (1, 4):
        v1, _ = TwoViewAugment((16, 16), c, jitter_p=1.0)(torch.randn(4, c, 16, 16))
        assert v1.shape == (4, c, 16, 16)


def test_views_are_asymmetric_and_nothing_goes_into_checkpoints():
    aug = TwoViewAugment((32, 32), 3, mean=[0.5] * 3, std=[0.2] * 3)
    blur1 = next(s for s in aug.view1 if isinstance(s, K.RandomGaussianBlur))
    sol2 = next(s for s in aug.view2 if isinstance(s, K.RandomSolarize))
    sol1 = next(s for s in aug.view1 if isinstance(s, K.RandomSolarize))
    assert blur1.p == 1.0 and sol1.p == 0.0 and sol2.p == 0.2
    assert aug.state_dict() == {}


def test_runs_under_autocast_in_float32():
    aug = TwoViewAugment((16, 16), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v1, v2 = aug(torch.randn(4, 1, 16, 16))
    assert v1.dtype == torch.float32 and torch.isfinite(v1).all()


def test_default_blur_kernel():
    assert default_blur_kernel((224, 224)) == 23
    assert default_blur_kernel((28, 28)) == 3
    assert default_blur_kernel((64, 48)) == 5


def test_bad_inputs():
    with pytest.raises(ValueError, match="mean=0.5"):
        TwoViewAugment((16, 16), 1, mean=0.5)
    with pytest.raises(ValueError, match=r"crop_scale.*\(0.0, 1.0\)"):
        TwoViewAugment((16, 16), 1, crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="blur_kernel.*4"):
        TwoViewAugment((16, 16), 1, blur_kernel=4)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\].*\(2, 3, 16, 16\)"):
        TwoViewAugment((16, 16), 1)(torch.randn(2, 3, 16, 16))
