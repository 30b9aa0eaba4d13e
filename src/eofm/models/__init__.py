"""Backbones for any band set, pretrained-weight adaptation, and model files.

- :func:`create_backbone` / :func:`list_backbones`: ViT, Swin v1/v2, ResNet and the
  billion-scale family (Cha et al. 2023) built with timm for any bands and image size.
- :func:`load_pretrained`: safe checkpoint loading with band adaptation and an
  :class:`AdaptationReport`.
- :func:`export_model` / :func:`load_model`: ``.safetensors`` + JSON card.
"""

from eofm.models.adapt import (
    AdaptationReport,
    BandMapping,
    adapt_input_weight,
    band_keys,
    load_pretrained,
    match_source_bands,
)
from eofm.models.backbones import (
    Backbone,
    BackboneSpec,
    create_backbone,
    get_backbone_spec,
    list_backbones,
    parameter_count,
    register_backbone,
)
from eofm.models.billion import BILLION_SCALE, BillionScaleConfig, billion_scale_counts
from eofm.models.checkpoints import extract_state_dict, load_state_dict_file, read_checkpoint
from eofm.models.export import (
    export_model,
    export_timm_state_dict,
    load_model,
    read_card,
)

__all__ = [
    "BILLION_SCALE",
    "AdaptationReport",
    "Backbone",
    "BackboneSpec",
    "BandMapping",
    "BillionScaleConfig",
    "adapt_input_weight",
    "band_keys",
    "billion_scale_counts",
    "create_backbone",
    "export_model",
    "export_timm_state_dict",
    "extract_state_dict",
    "get_backbone_spec",
    "list_backbones",
    "load_model",
    "load_pretrained",
    "load_state_dict_file",
    "match_source_bands",
    "parameter_count",
    "read_card",
    "read_checkpoint",
    "register_backbone",
]
