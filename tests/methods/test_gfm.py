"""GFM: SimMIM on the student + distillation to a frozen, checkpoint-loaded teacher."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from eofm.errors import ConfigError
from eofm.methods import Views, create_method
from eofm.methods.gfm import GFM
from eofm.models import Backbone, create_backbone

from .conftest import ImageSet, assert_loss_falls, train_losses, unused_parameters

S2 = "sentinel2_l1c"


def rgb_checkpoint(name: str, tmp_path: Path, img_size: int = 32) -> tuple[Path, Backbone]:
    """A 3-band 'pretrained' teacher written as a plain timm state dict."""
    torch.manual_seed(1)
    teacher = create_backbone(name, bands=None, img_size=img_size)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / f"{name}_rgb.pth"
    torch.save(teacher.model.state_dict(), path)
    return path, teacher


def random_teacher_gfm(name: str, bands: Any, **kw: Any) -> GFM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = create_backbone(name, bands=bands, img_size=32)
        return GFM(student, allow_random_teacher=True, **kw)


@pytest.mark.parametrize("name", ["swin_test", "vit_test"])
@pytest.mark.parametrize("bands", [2, 13])
def test_forward_backward_any_bands(name: str, bands: int) -> None:
    torch.manual_seed(0)
    m = random_teacher_gfm(name, bands)
    x = torch.randn(3, bands, 32, 32)
    out = m.forward_loss(Views([x], num_global=1), {"image": x})
    assert torch.isfinite(out["loss"])
    assert out["loss"].item() == pytest.approx((out["loss_mim"] + out["loss_distill"]).item())
    out["loss"].backward()
    assert m.projector.weight.grad is not None
    assert m.backbone.model.patch_embed.proj.weight.grad is not None
    assert all(p.grad is None for p in m.teacher.parameters())
    assert unused_parameters(m) == []


def test_teacher_checkpoint_adapted_to_student_bands(tmp_path: Path) -> None:
    path, rgb = rgb_checkpoint("swin_test", tmp_path)
    student = create_backbone("swin_test", bands=S2, img_size=32)
    m = create_method("gfm", student, teacher_checkpoint=str(path))
    assert isinstance(m, GFM)
    assert m.teacher.bands == student.bands and m.teacher.pretrained_report is not None
    w_t = m.teacher.model.patch_embed.proj.weight
    w_rgb = rgb.model.patch_embed.proj.weight
    for band, src in (("B04", 0), ("B03", 1), ("B02", 2)):  # RGB kernels copied exactly
        assert torch.equal(w_t[:, student.bands.index(band)], w_rgb[:, src])
    # the student stays randomly initialised ("an unbiased student is most ideal")
    assert not torch.equal(
        student.model.layers[0].blocks[0].attn.qkv.weight,
        m.teacher.model.layers[0].blocks[0].attn.qkv.weight,
    )
    # GFM's tap: stage 3 + patch merging (layers[:-1] in the original Swin code)
    assert m.student_level == 3 and m.projector.in_features == 192
    assert m.projector.out_features == 192


def test_teacher_is_frozen_and_bit_identical(tmp_path: Path, image_set: ImageSet) -> None:
    path, _ = rgb_checkpoint("swin_test", tmp_path)
    student = create_backbone("swin_test", bands=2, img_size=32)
    m = GFM(student, teacher_checkpoint=path, teacher_source_bands=None, teacher_strict=False)
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    assert all(not p.requires_grad for p in m.teacher.parameters())
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert not trainable & {id(p) for p in m.teacher.parameters()}
    m.train()
    assert not m.teacher.training and m.backbone.training
    # an optimiser given *all* parameters (with weight decay) still leaves the teacher alone
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    x = image_set.bands(2)[:8]
    student_before = student.model.patch_embed.proj.weight.clone()
    for _ in range(3):
        loss = m.forward_loss(Views([x], num_global=1), {"image": x})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(student.model.patch_embed.proj.weight, student_before)


def test_teacher_sees_unmasked_resized_image(tmp_path: Path) -> None:
    path, _ = rgb_checkpoint("swin_test", tmp_path, img_size=64)
    student = create_backbone("swin_test", bands=None, img_size=32)
    m = GFM(student, teacher_checkpoint=path, teacher_img_size=64)
    seen: list[torch.Tensor] = []
    m.teacher.model.patch_embed.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    x = torch.randn(2, 3, 32, 32)
    m.forward_masked(x, m.make_mask(x))
    assert seen[0].shape == (2, 3, 64, 64)
    expected = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear")
    assert torch.allclose(seen[0], expected)  # the whole image, no mask token anywhere


def test_alpha_weights_distillation() -> None:
    torch.manual_seed(0)
    m = random_teacher_gfm("vit_test", 3, alpha=0.0)
    x = torch.randn(2, 3, 32, 32)
    out = m.forward_masked(x, m.make_mask(x))
    assert out["loss"].item() == pytest.approx(out["loss_mim"].item())
    assert m.student_level == 1  # ViT: 2/3 of depth 2, rounded


def test_requires_a_teacher_checkpoint() -> None:
    student = create_backbone("vit_test", bands=3, img_size=32)
    with pytest.raises(ConfigError, match="teacher_checkpoint"):
        GFM(student)
    with pytest.raises(ConfigError, match="level"):
        random_teacher_gfm("swin_test", 3, student_level=9)


def test_loss_falls(tmp_path: Path, image_set: ImageSet) -> None:
    path, _ = rgb_checkpoint("swin_test", tmp_path)
    student = create_backbone("swin_test", bands=3, img_size=32)
    m = GFM(student, teacher_checkpoint=path)
    losses = train_losses(m, image_set.bands(3), steps=50, lr=2e-3, geometric=False)
    assert_loss_falls(losses)
