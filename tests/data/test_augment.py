import math

import pytest
import torch
import torch.nn.functional as F

from mimkit.data import DataConfig, EvalTransform, PretrainAugment, build_augment, denormalize, normalize
from mimkit.data.transforms import crop_resize, random_resized_crop_boxes


def gradient_batch(n: int, h: int = 28, w: int = 28) -> torch.Tensor:
    """uint8 [n, 1, h, w] with x * 9 + y along the image (no symmetry), different per sample."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    base = (x * 9 + y).clamp(max=250)
    return ((base + torch.arange(n).view(n, 1, 1)) % 256).to(torch.uint8).unsqueeze(1)


def test_output_shape_dtype_and_range():
    aug = PretrainAugment(28, (0.286,), (0.353,))
    out = aug(gradient_batch(16))
    assert out.shape == (16, 1, 28, 28) and out.dtype == torch.float32
    low, high = (0 - 0.286) / 0.353, (1 - 0.286) / 0.353  # bicubic overshoot is clamped before normalising
    assert out.min() >= low - 1e-5 and out.max() <= high + 1e-5
    assert PretrainAugment((16, 24), (0.5,), (0.5,))(gradient_batch(3)).shape == (3, 1, 16, 24)


@pytest.mark.parametrize("backend", ["torch", "kornia"])
def test_full_crop_without_flip_is_normalisation_only(backend):
    aug = PretrainAugment(28, (0.5,), (0.25,), crop_scale=(1, 1), ratio=(1, 1), hflip=False, backend=backend)
    constant = torch.full((4, 1, 28, 28), 51, dtype=torch.uint8)
    assert torch.allclose(aug(constant), torch.full((4, 1, 28, 28), (51 / 255 - 0.5) / 0.25), atol=1e-5)
    images = gradient_batch(4)
    assert torch.allclose(aug(images), (images.float() / 255 - 0.5) / 0.25, atol=1e-4)


def test_flip_happens_for_about_half_of_the_batch():
    torch.manual_seed(0)
    aug = PretrainAugment(28, (0.0,), (1.0,), crop_scale=(1, 1), ratio=(1, 1), hflip=True)
    images = gradient_batch(1000)
    out = aug(images)
    plain = images.float() / 255
    same = (out - plain).abs().amax(dim=(1, 2, 3)) < 1e-4
    flipped = (out - plain.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert bool((same ^ flipped).all())  # each image is either untouched or mirrored
    assert 420 < int(flipped.sum()) < 580  # Binomial(1000, 0.5): mean 500, sd 16


def test_crop_matches_interpolating_the_cropped_region():
    torch.manual_seed(1)
    x = torch.rand(2, 3, 28, 28)
    boxes = torch.tensor([[5.0, 3.0, 14.0, 20.0], [0.0, 0.0, 28.0, 28.0]])  # (top, left, h, w)
    out = crop_resize(x, boxes, (28, 28))
    crop = F.interpolate(x[:1, :, 5:19, 3:23], size=(28, 28), mode="bicubic", align_corners=False)
    # rows 3..24 and columns 2..25 only use pixels inside the crop (worked out from the bicubic taps)
    assert torch.allclose(out[:1, :, 3:25, 2:26], crop[:, :, 3:25, 2:26], atol=1e-5)
    assert torch.allclose(out[1], x[1], atol=1e-5)  # the whole image at its own size: identity
    flipped = crop_resize(x, boxes, (28, 28), flip=torch.tensor([True, True]))
    assert torch.allclose(flipped, out.flip(-1), atol=1e-5)


def test_crop_edges_replicate_the_border():
    # upsampling puts bicubic taps outside the image at the edges: they must repeat the border pixels
    # (as F.interpolate does), not read zeros, or a constant image gets dark edges
    x = torch.full((2, 1, 28, 28), 0.6)
    boxes = torch.tensor([[0.0, 0.0, 28.0, 28.0], [20.0, 0.0, 8.0, 9.0]])
    out = crop_resize(x, boxes, (56, 56))
    assert torch.allclose(out, torch.full_like(out, 0.6), atol=1e-6)


def test_crop_boxes_follow_the_scale_and_ratio_ranges():
    torch.manual_seed(2)
    boxes = random_resized_crop_boxes(20000, 28, 28, (0.2, 1.0), (3 / 4, 4 / 3))
    top, left, h, w = boxes.unbind(1)
    assert bool((boxes == boxes.round()).all()) and bool((h >= 1).all() & (w >= 1).all())
    assert bool((top >= 0).all() & (left >= 0).all() & (top + h <= 28).all() & (left + w <= 28).all())
    # whole-pixel rounding moves each side by up to 0.5 px: for the smallest area a = 0.2 * 784 and
    # the extreme ratio r, w * h >= (sqrt(a r) - 0.5)(sqrt(a / r) - 0.5)
    # and w / h <= (sqrt(a r) + 0.5) / (sqrt(a / r) - 0.5)
    a, r = 0.2 * 784, 4 / 3
    lo = (math.sqrt(a * r) - 0.5) * (math.sqrt(a / r) - 0.5) / 784
    hi_ratio = (math.sqrt(a * r) + 0.5) / (math.sqrt(a / r) - 0.5)
    area, ratio = h * w / 784, w / h
    assert area.min() >= lo and area.max() <= 1
    assert ratio.min() >= 1 / hi_ratio and ratio.max() <= hi_ratio
    assert area.std() > 0.15  # really random: U(0.2, 1) has sd 0.23
    assert (left > 0).float().mean() > 0.5 and (top > 0).float().mean() > 0.5


def test_crop_falls_back_to_the_centre_when_nothing_fits():
    # ratio 2..3 of the full area never fits in a square: centre crop of width 28, height 28 / 2
    boxes = random_resized_crop_boxes(5, 28, 28, (1.0, 1.0), (2.0, 3.0))
    assert boxes.tolist() == [[7.0, 0.0, 14.0, 28.0]] * 5


def test_presets_and_config():
    assert PretrainAugment(28, (0.5,), (0.5,), preset="simmim").scale == (0.67, 1.0)
    mae = build_augment(DataConfig(), type("D", (), dict(img_size=(28, 28), mean=(0.3,), std=(0.4,)))())
    assert mae.scale == (0.2, 1.0) and mae.ratio == (3 / 4, 4 / 3) and mae.hflip
    none = PretrainAugment(56, (0.5,), (0.25,), preset="none")
    out = none(torch.full((2, 1, 28, 28), 51, dtype=torch.uint8))
    assert out.shape == (2, 1, 56, 56) and torch.allclose(
        out, torch.tensor((51 / 255 - 0.5) / 0.25), atol=1e-5
    )
    with pytest.raises(ValueError, match="'mea'"):
        PretrainAugment(28, (0.5,), (0.5,), preset="mea")
    with pytest.raises(ValueError, match="3 channels but the normalisation has 2"):
        PretrainAugment(28, (0.5, 0.5), (0.5, 0.5))(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))


def test_eval_transform_and_denormalize():
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    out = EvalTransform(8, mean, std)(images)
    assert torch.allclose(out, normalize(images, mean, std))
    assert torch.allclose(out[:, 1], (images[:, 1].float() / 255 - 0.4) / 0.25, atol=1e-6)
    assert torch.allclose(denormalize(out, mean, std), images.float() / 255, atol=1e-6)
    assert EvalTransform(16, mean, std)(images).shape == (3, 3, 16, 16)
    assert denormalize(torch.full((3, 2, 2), 100.0), mean, std).max() == 1.0  # clamped for pictures
