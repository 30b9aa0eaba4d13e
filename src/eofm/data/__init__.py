"""Data layer: sensors, readers, datasets, statistics, shards and synthetic scenes."""

from eofm.data.sample import IGNORE_INDEX, Sample, collate_samples
from eofm.data.sensors import Band, Sensor, get_sensor, list_sensors, match_bands, register_sensor

__all__ = [
    "IGNORE_INDEX",
    "Band",
    "Sample",
    "Sensor",
    "collate_samples",
    "get_sensor",
    "list_sensors",
    "match_bands",
    "register_sensor",
]
