"""Each method's trivial baseline (``loss_baseline``), worked out by hand on a 4x4 image of 2x2 patches.

The image, row by row (squares sum to 50, 66, 9, 29; values to 10, 14, 5, 9), and its four patches:

    0 0 | 5 5        top-left  0 0 0 4   mean 1    (|x - mean|: 1 1 1 3)    biased var 3,    unbiased 4
    0 4 | 5 5        top-right 5 5 5 5   mean 5    (0 0 0 0)                biased var 0
    ----+----        bottom-left 1 2 3 4 mean 2.5  (1.5 0.5 0.5 1.5)        biased var 1.25, unbiased 5/3
    1 2 | 0 2        bottom-right 0 2 0 2 mean 1   (1 1 1 1)                biased var 1,    unbiased 4/3
    3 4 | 0 2
"""

import math

import pytest
import torch

from mimkit import create_encoder, create_method
from mimkit.losses import masked_l1, masked_mse

IMAGE = torch.tensor([[0, 0, 5, 5], [0, 4, 5, 5], [1, 2, 0, 2], [3, 4, 0, 2]], dtype=torch.float32)
EPS = 1e-6  # normalize_patches' eps


def encoder(size=4, chans=1):
    return create_encoder(
        "vit_tiny_patch4_28", img_size=size, patch_size=2, in_chans=chans, embed_dim=16, depth=1, num_heads=2
    )


def mae(norm_pix):
    return create_method(
        "mae", encoder=encoder(), decoder_dim=8, decoder_depth=1, decoder_heads=2, norm_pix_loss=norm_pix
    )


def batch(images):
    return images, torch.zeros(images.shape[0], dtype=torch.long)


SQUARES = 50 + 66 + 9 + 29  # sum of the squared pixels, row by row
ABS = 10 + 14 + 5 + 9  # sum of the pixels (all >= 0), row by row


def test_mae_baseline_without_norm_pix_is_predicting_the_mean_colour_zero():
    # the data arrive normalised by their mean colour, so predicting it is predicting zeros: mean of x^2
    meaning, values = mae(norm_pix=False).loss_baseline(batch(IMAGE.view(1, 1, 4, 4)))
    assert meaning == "predicting the data's mean colour"
    assert values["loss"].item() == pytest.approx(SQUARES / 16)


def test_mae_norm_pix_baseline_is_just_under_one_per_patch_with_contrast():
    # normalised by the unbiased variance: a patch scores biased / (unbiased + eps) = (P - 1) / P = 0.75,
    # a flat patch 0
    _, values = mae(norm_pix=True).loss_baseline(batch(IMAGE.view(1, 1, 4, 4)))
    expected = (3 / (4 + EPS) + 0 + 1.25 / (5 / 3 + EPS) + 1 / (4 / 3 + EPS)) / 4
    assert values["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.5625, abs=1e-6)


def test_mae_baseline_is_the_loss_of_predicting_zeros_under_norm_pix():
    method = mae(norm_pix=True)
    target = method.target(IMAGE.view(1, 1, 4, 4))  # [1, 4, 4]
    everywhere = torch.ones(1, 4)
    zeros = masked_mse(torch.zeros_like(target), target, everywhere)
    assert method.loss_baseline(batch(IMAGE.view(1, 1, 4, 4)))[1]["loss"].item() == pytest.approx(
        zeros.item()
    )


def test_simmim_baseline_is_the_l1_of_predicting_the_mean_colour_zero():
    method = create_method("simmim", encoder=encoder(chans=2), mask_patch_size=2, mask_ratio=0.5)
    images = torch.stack([IMAGE, 2 * IMAGE]).unsqueeze(0)  # [1, 2, 4, 4]: the second channel doubled
    meaning, values = method.loss_baseline(batch(images))
    assert meaning == "predicting the data's mean colour"
    assert values["loss"].item() == pytest.approx((ABS / 16 + 2 * ABS / 16) / 2)  # 3.5625
    # what SimMIM's own loss gives that prediction with every pixel masked
    pred = torch.zeros_like(images)
    assert masked_l1(pred, images, torch.ones(1, 1, 4, 4)).item() == pytest.approx(3.5625, rel=1e-6)


def test_sit_baseline_adds_chance_for_the_contrastive_part():
    images = IMAGE.repeat(2, 2).expand(3, 1, 8, 8).clone()  # 3 images of 4 copies: mean |x| 38 / 16 still
    gmml = create_method("gmml", encoder=encoder(8), augment=False, recon_hidden_dim=16)
    meaning, values = gmml.loss_baseline(batch(images))
    assert values["loss"].item() == pytest.approx(ABS / 16) and values["loss_recon"].item() == pytest.approx(
        ABS / 16
    )
    sit = create_method(
        "sit",
        encoder=encoder(8),
        augment=False,
        alpha=5.0,
        recon_hidden_dim=16,
        proj_hidden_dim=16,
        proj_dim=8,
    )
    meaning, values = sit.loss_baseline(batch(images))
    # 3 images: each anchor has 2 * 3 - 1 = 5 candidates, the positive as likely as any: ln 5
    assert values["loss_contrastive"].item() == pytest.approx(math.log(5))
    assert values["loss"].item() == pytest.approx(5 * ABS / 16 + math.log(5))
    assert "chance" in meaning
