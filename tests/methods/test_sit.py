"""SiT / GMML: EMA teacher and its schedule, reconstruction losses, a training step, presets, bad input."""

import math

import pytest
import torch

from mimkit.masking.gmml import gmml_corrupt
from mimkit.methods import create_method
from mimkit.methods.sit import SiT, cosine_momentum
from mimkit.models import create_encoder

SMALL_HEADS = dict(recon_hidden_dim=32, proj_hidden_dim=32, proj_dim=16)


def _encoder(in_chans: int = 1, size: int = 16):
    return create_encoder(
        "vit_tiny_patch4_28",
        img_size=size,
        patch_size=4,
        in_chans=in_chans,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )


def _sit(**kwargs) -> SiT:
    torch.manual_seed(0)
    return create_method("sit", encoder=_encoder(), **{**SMALL_HEADS, **kwargs})


def test_teacher_starts_as_a_frozen_copy_with_its_own_names():
    method = _sit()
    student, teacher = method.encoder.state_dict(), method.teacher_encoder.state_dict()
    assert student.keys() == teacher.keys()
    assert all(torch.equal(student[k], teacher[k]) for k in student)
    assert all(not p.requires_grad for p in method.teacher_encoder.parameters())
    assert all(not p.requires_grad for p in method.teacher_projector.parameters())
    keys = method.state_dict().keys()
    assert "encoder.patch_embed.proj.weight" in keys and "teacher_encoder.patch_embed.proj.weight" in keys
    assert not any(k.startswith("augment") for k in keys)
    method.train()
    assert method.encoder.training and not method.teacher_encoder.training  # teacher: no drop path


def test_ema_update_follows_the_formula():
    method = _sit()
    with torch.no_grad():  # make student and teacher differ
        for p in (*method.encoder.parameters(), *method.projector.parameters()):
            p.add_(torch.randn_like(p))
    pairs = [(method.teacher_encoder, method.encoder), (method.teacher_projector, method.projector)]
    before = [[t.clone() for t in teacher.parameters()] for teacher, _ in pairs]
    step, total = 7, 20
    method.on_train_step_end(step, total)
    m = 1 - (1 - 0.996) * (math.cos(math.pi * step / total) + 1) / 2
    assert method.momentum == pytest.approx(m)
    for (teacher, student), old in zip(pairs, before, strict=True):
        for t, s, t0 in zip(teacher.parameters(), student.parameters(), old, strict=True):
            assert torch.allclose(t, m * t0 + (1 - m) * s, atol=1e-6)
    # At the last step the momentum is 1: the teacher stops moving.
    frozen = [t.clone() for t in method.teacher_encoder.parameters()]
    method.on_train_step_end(total, total)
    assert all(torch.equal(a, b) for a, b in zip(frozen, method.teacher_encoder.parameters(), strict=True))


def test_reconstruction_loss_zero_when_perfect_and_masked_counts_corrupted_pixels_only():
    x = torch.randn(4, 3, 16, 16)
    _, mask = gmml_corrupt(x, fill="noise", generator=torch.Generator().manual_seed(0))
    area = mask.mean().item()
    assert 0 < area < 1
    masked, full = _sit(recon_loss="masked"), _sit(recon_loss="full")
    assert masked.reconstruction_loss(x, x, mask).item() == 0.0
    assert full.reconstruction_loss(x, x, mask).item() == 0.0
    # Error 0.5 on corrupted pixels, 2.0 on the others.
    pred = x + 0.5 * mask + 2.0 * (1 - mask)
    assert masked.reconstruction_loss(pred, x, mask).item() == pytest.approx(0.5, rel=1e-4)
    assert full.reconstruction_loss(pred, x, mask).item() == pytest.approx(
        0.5 * area + 2.0 * (1 - area), rel=1e-4
    )
    # Wrong only where nothing was corrupted: GMML does not see it.
    assert masked.reconstruction_loss(x + 3.0 * (1 - mask), x, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_training_step_losses_and_gradients():
    method = _sit(alpha=5.0)
    method.train()
    x = torch.randn(6, 1, 16, 16)
    out = method.training_step((x, torch.zeros(6, dtype=torch.long)))
    for key in ("loss", "loss_recon", "loss_contrastive"):
        assert out[key].ndim == 0 and torch.isfinite(out[key])
    assert out["loss"].item() == pytest.approx(
        5.0 * out["loss_recon"].item() + out["loss_contrastive"].item(), rel=1e-5
    )
    assert out["pred"].shape == (6, 1, 16, 16) and out["mask"].shape == (6, 1, 16, 16)
    # NT-Xent of 2N = 12 embeddings is at least 0 and starts near log(2N - 1) scale, not 0.
    assert out["loss_contrastive"].item() > 0.5
    out["loss"].backward()
    for module in (method.encoder.patch_embed, method.encoder.blocks, method.recon_head, method.projector):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in method.teacher_encoder.parameters())
    assert all(p.grad is None for p in method.teacher_projector.parameters())


def test_training_step_rgb_with_dataset_statistics():
    torch.manual_seed(0)
    method = create_method(
        "sit",
        encoder=_encoder(in_chans=3),
        pixel_mean=[0.5, 0.4, 0.3],
        pixel_std=[0.2, 0.2, 0.2],
        align=4,
        recon_loss="masked",
        **SMALL_HEADS,
    )
    out = method.training_step((torch.randn(4, 3, 16, 16), None))
    assert torch.isfinite(out["loss"])
    assert bool(((out["mask"] == 0) | (out["mask"] == 1)).all())


def test_gmml_preset_is_reconstruction_only():
    torch.manual_seed(0)
    method = create_method("gmml", encoder=_encoder(), recon_hidden_dim=32)
    assert not hasattr(method, "teacher_encoder") and not hasattr(method, "projector")
    assert method.recon_loss == "masked"
    out = method.training_step((torch.randn(4, 1, 16, 16), None))
    assert "loss_contrastive" not in out
    assert torch.equal(out["loss"], out["loss_recon"])
    out["loss"].backward()
    assert method.encoder.patch_embed.proj.weight.grad is not None
    method.on_train_step_end(1, 10)  # a no-op without a teacher
    with pytest.raises(ValueError, match="contrastive=True"):
        create_method("gmml", encoder=_encoder(), contrastive=True)
    with pytest.raises(ValueError, match=r"momentum=0\.99, proj_dim=8|proj_dim=8, momentum=0\.99"):
        create_method("gmml", encoder=_encoder(), momentum=0.99, proj_dim=8)


def test_reconstruct_for_pictures():
    method = _sit().eval()
    x = torch.randn(3, 1, 16, 16)
    a = method.reconstruct(x, generator=torch.Generator().manual_seed(1))
    b = method.reconstruct(x, generator=torch.Generator().manual_seed(1))
    assert a["corrupted"].shape == a["reconstruction"].shape == x.shape and a["mask"].shape == (3, 1, 16, 16)
    assert torch.equal(a["corrupted"], b["corrupted"]) and torch.allclose(
        a["reconstruction"], b["reconstruction"]
    )
    keep = (a["mask"] == 0).expand_as(x)
    assert torch.equal(a["corrupted"][keep], x[keep])  # no view augmentation: only corrupted pixels change
    # Same corruption as the masking function with the same seed and settings.
    expected, mask = gmml_corrupt(x, ("noise", "replace"), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["mask"], mask) and torch.equal(a["corrupted"], expected)


def test_teacher_fed_clean_views_student_corrupted(monkeypatch):
    method = _sit(augment=False)
    seen = {}

    def recording(name, forward):
        def wrapped(images, **kwargs):
            seen[name] = images
            return forward(images, **kwargs)

        return wrapped

    monkeypatch.setattr(
        method.encoder, "forward_encoder", recording("student", method.encoder.forward_encoder)
    )
    monkeypatch.setattr(
        method.teacher_encoder,
        "forward_encoder",
        recording("teacher", method.teacher_encoder.forward_encoder),
    )
    x = torch.randn(4, 1, 16, 16)
    method.training_step((x, None))
    assert torch.equal(seen["teacher"], torch.cat([x, x]))  # clean views (augment off: the batch twice)
    changed = seen["student"] != seen["teacher"]
    assert changed.any() and not changed.all()  # the student sees corrupted views


def test_replace_never_pastes_the_other_view_of_the_same_image():
    method = _sit(augment=False, fill="replace")
    values = torch.tensor([10.0, 20.0])
    x = values.view(2, 1, 1, 1).expand(2, 1, 16, 16).clone()
    seen = {}
    forward = method.encoder.forward_encoder
    method.encoder.forward_encoder = lambda images: (seen.__setitem__("student", images), forward(images))[1]
    for _ in range(6):
        out = method.training_step((x, None))
        view1 = seen["student"][:2]
        corrupted = out["mask"].bool()
        assert corrupted.any()
        for i, other in ((0, 1), (1, 0)):
            assert torch.all(view1[i][corrupted[i]] == values[other])  # from the other image only


def test_bad_inputs():
    with pytest.raises(ValueError, match="alpha.*-1"):
        create_method("sit", encoder=_encoder(), alpha=-1.0)
    with pytest.raises(ValueError, match="recon_loss.*'l2'"):
        create_method("sit", encoder=_encoder(), recon_loss="l2")
    with pytest.raises(ValueError, match="1.0"):
        create_method("sit", encoder=_encoder(), max_ratio=1.0)
    with pytest.raises(ValueError, match="align=3"):
        create_method("sit", encoder=_encoder(), align=3)
    with pytest.raises(ValueError, match="unknown_option"):
        create_method("sit", encoder=_encoder(), unknown_option=1)
    swin = create_encoder("swin_tiny_patch2_window4_32", embed_dim=8, depths=(1, 1), num_heads=(1, 1))
    for name in ("sit", "gmml"):  # no class token: refused when built, not at the first step
        with pytest.raises(ValueError, match="SwinTransformer lacks a class token"):
            create_method(name, encoder=swin)
    method = _sit()
    with pytest.raises(ValueError, match="replace.*1 image"):
        method.training_step((torch.randn(1, 1, 16, 16), None))


def test_cosine_momentum_end_points_and_formula():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)  # half way: cos(pi / 2) = 0
    step, total = 30, 100
    expected = 1 - (1 - 0.996) * (math.cos(math.pi * step / total) + 1) / 2
    assert cosine_momentum(step, total) == pytest.approx(expected)
    values = [cosine_momentum(s, 100) for s in range(101)]
    assert all(x <= y for x, y in zip(values[:-1], values[1:], strict=True))
    assert cosine_momentum(-5, 100) == cosine_momentum(0, 100)  # clamped
    assert cosine_momentum(150, 100) == cosine_momentum(100, 100)
    with pytest.raises(ValueError, match="total_steps.*0"):
        cosine_momentum(0, 0)


def test_reconstruct_with_a_given_mask():
    x = torch.randn(1, 1, 16, 16)  # one image: no 'replace' fill with a given mask
    mask = torch.zeros(1, 4, 4)
    mask[0, 1, 2] = 1.0  # the patch at rows 4-7, columns 8-11
    hidden = torch.zeros(1, 1, 16, 16)
    hidden[..., 4:8, 8:12] = 1.0
    zeros = _sit(fill="zeros").eval().reconstruct(x, mask=mask)
    torch.testing.assert_close(zeros["mask"], hidden)
    torch.testing.assert_close(zeros["corrupted"], x * (1 - hidden))
    noisy = _sit(fill=("noise", "replace")).eval().reconstruct(x, mask=mask)
    keep = hidden == 0
    assert torch.equal(noisy["corrupted"][keep], x[keep]) and not torch.equal(
        noisy["corrupted"][~keep], x[~keep]
    )
