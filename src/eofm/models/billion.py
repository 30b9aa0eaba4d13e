"""The model family of Cha, Seo and Lee 2023, "A Billion-scale Foundation Model for Remote
Sensing Images" (arXiv 2304.05215): plain ViTs with 86M, 605.26M, 1.3B and 2.4B parameters.

Verified from the paper's abstract: the four parameter counts, MAE pretraining on MillionAID,
the best model's name ``ViT-G12X4``, and "parallelized transformer scaling".
*Inferred* (the paper's configuration table was not available): a name ``ViT-<size><D>X<P>``
is read as in Touvron et al. 2022 ("Three things everyone should know about ViTs"): D layers,
each holding P attention blocks in parallel followed by P MLP blocks in parallel
(timm's :class:`~timm.models.vision_transformer.ParallelThingsBlock`). Widths were chosen so that
the parameter counts land within 1% of the paper's figures:

============  =====  ======  =====  =====  =========  ===============  ==========
name          width  layers  par.   heads  MLP        parameters       paper
============  =====  ======  =====  =====  =========  ===============  ==========
vit_b12x1     768    12      1      12     3072       85,798,656       86M
vit_l12x4     1024   12      4      16     4096       605,611,008      605.26M
vit_h12x4     1536   12      4      24     5760       1,304,759,808    1.3B
vit_g12x4     2048   12      4      32     8192       2,419,181,568    2.4B
============  =====  ======  =====  =====  =========  ===============  ==========

(3 input bands, patch 16, image 224, no classifier.) ``vit_b12x1`` is the standard ViT-B/16 and
``vit_l12x4`` is 48 ViT-L blocks: both follow from the paper's counts. The ``vit_h12x4`` width
and MLP ratio (3.75) and the ``vit_g12x4`` width are guesses that reproduce the counts; a plain
1536-wide, MLP-ratio-4 model would have 1.36B parameters (4.6% off).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from timm.models.vision_transformer import ParallelThingsBlock

from eofm.models.backbones import get_backbone_spec, register_backbone


@dataclass(frozen=True)
class BillionScaleConfig:
    """One configuration of the billion-scale family."""

    name: str
    paper_name: str
    width: int
    layers: int
    parallel: int
    heads: int
    mlp_ratio: float
    paper_params: int
    inferred: bool

    def timm_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "patch_size": 16,
            "embed_dim": self.width,
            "depth": self.layers,
            "num_heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
        }
        if self.parallel > 1:
            kwargs["block_fn"] = partial(ParallelThingsBlock, num_parallel=self.parallel)
        return kwargs


BILLION_SCALE: tuple[BillionScaleConfig, ...] = (
    BillionScaleConfig("vit_b12x1", "ViT-B12X1", 768, 12, 1, 12, 4.0, 86_000_000, False),
    BillionScaleConfig("vit_l12x4", "ViT-L12X4", 1024, 12, 4, 16, 4.0, 605_260_000, False),
    BillionScaleConfig("vit_h12x4", "ViT-H12X4", 1536, 12, 4, 24, 3.75, 1_300_000_000, True),
    BillionScaleConfig("vit_g12x4", "ViT-G12X4", 2048, 12, 4, 32, 4.0, 2_400_000_000, True),
)

#: A tiny model with the same parallel-block structure, for tests.
_TEST_CONFIG = BillionScaleConfig("vit_test_parallel", "tiny 2X4", 64, 2, 4, 2, 2.0, 0, True)


def _register() -> None:
    for cfg in (*BILLION_SCALE, _TEST_CONFIG):
        is_test = cfg is _TEST_CONFIG
        register_backbone(
            cfg.name,
            family="vit",
            timm_name="vit_base_patch16_224",
            img_size=32 if is_test else 224,
            embed_dim=cfg.width,
            patch_size=8 if is_test else 16,
            timm_kwargs={**cfg.timm_kwargs(), **({"patch_size": 8} if is_test else {})},
            description=(
                f"{cfg.paper_name} (Cha et al. 2023): {cfg.layers} layers x {cfg.parallel} "
                f"parallel blocks, width {cfg.width}, {cfg.heads} heads, MLP ratio {cfg.mlp_ratio}"
                + (" [config inferred]" if cfg.inferred else "")
            ),
            paper_params=cfg.paper_params or None,
            tags=("test", "parallel") if is_test else ("billion_scale",),
        )


_register()


def billion_scale_counts(in_chans: int = 3) -> dict[str, tuple[int, int]]:
    """``{name: (parameters, paper's figure)}`` for the family, counted on the meta device."""
    return {
        cfg.name: (get_backbone_spec(cfg.name).num_params(in_chans), cfg.paper_params)
        for cfg in BILLION_SCALE
    }
