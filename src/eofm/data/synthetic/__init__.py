"""Synthetic EO scenes: the embedded default dataset for demos and tests.

- :func:`generate_landcover`: land-cover scenes (fields, forest, lakes, rivers, towns, bare
  soil) rendered as Sentinel-2 L1C and Sentinel-1 GRD, with class, multi-label and
  segmentation labels.
- :func:`generate_wavemode`: Sentinel-1 Wave-Mode-like ocean imagettes of the ten TenGeoP
  classes, with significant wave height and wind speed targets.
- :func:`write_synthetic`: either of them on disk as GeoTIFFs + ``labels.csv`` or as shards.

Everything is deterministic for a given ``seed``.
"""

from eofm.data.synthetic.landcover import CLASS_NAMES, class_fractions, multi_hot
from eofm.data.synthetic.render import S1_BANDS, S1_LOOKS, S2_BANDS
from eofm.data.synthetic.scenes import SceneSet, generate_landcover, iter_landcover
from eofm.data.synthetic.wavemode import (
    WV_BANDS,
    WV_CLASS_NAMES,
    WV_LOOKS,
    WV_PIXEL_M,
    WaveModeSet,
    directional_spectrum,
    generate_wavemode,
    sea_surface,
    significant_wave_height,
)
from eofm.data.synthetic.writer import write_synthetic

__all__ = [
    "CLASS_NAMES",
    "S1_BANDS",
    "S1_LOOKS",
    "S2_BANDS",
    "WV_BANDS",
    "WV_CLASS_NAMES",
    "WV_LOOKS",
    "WV_PIXEL_M",
    "SceneSet",
    "WaveModeSet",
    "class_fractions",
    "directional_spectrum",
    "generate_landcover",
    "generate_wavemode",
    "iter_landcover",
    "multi_hot",
    "sea_surface",
    "significant_wave_height",
    "write_synthetic",
]
