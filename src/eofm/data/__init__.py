"""Data layer: sensors, readers, datasets, statistics, shards and synthetic scenes."""

from eofm.data.catalog import open_dataset
from eofm.data.datasets import (
    BigEarthNet,
    ChangeDetectionDataset,
    ClassificationCSV,
    ClassificationFolder,
    MultiLabelCSV,
    MultiLabelJSON,
    SegmentationDataset,
    Sen1Floods11,
    TorchGeoDataset,
    UnlabelledPool,
)
from eofm.data.readers import Raster, read_band_files, read_raster
from eofm.data.sample import IGNORE_INDEX, Sample, collate_samples
from eofm.data.sensors import (
    Band,
    Sensor,
    find_sensor,
    get_sensor,
    list_sensors,
    match_bands,
    register_sensor,
)
from eofm.data.shards import ShardDataset, ShardIterableDataset, ShardWriter, pack_dataset
from eofm.data.stats import DatasetCard, Normalizer, compute_stats, load_or_compute_card

__all__ = [
    "IGNORE_INDEX",
    "Band",
    "BigEarthNet",
    "ChangeDetectionDataset",
    "ClassificationCSV",
    "ClassificationFolder",
    "DatasetCard",
    "MultiLabelCSV",
    "MultiLabelJSON",
    "Normalizer",
    "Raster",
    "Sample",
    "SegmentationDataset",
    "Sen1Floods11",
    "Sensor",
    "ShardDataset",
    "ShardIterableDataset",
    "ShardWriter",
    "TorchGeoDataset",
    "UnlabelledPool",
    "collate_samples",
    "compute_stats",
    "find_sensor",
    "get_sensor",
    "list_sensors",
    "load_or_compute_card",
    "match_bands",
    "open_dataset",
    "pack_dataset",
    "read_band_files",
    "read_raster",
    "register_sensor",
]
