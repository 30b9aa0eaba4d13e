"""Sensor registry: ordered band names, centre wavelengths, ground sampling distance, value scale.

Bands are always matched by *name*. Each band has a canonical name (``B04``), a common
name shared across sensors (``red``) and optional aliases (``B4``). :func:`match_bands`
maps requested names onto the names a file holds, whatever their order.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from eofm.errors import BandMismatchError, UnknownNameError

SensorKind = Literal["optical", "sar"]

#: Speed of light over the Sentinel-1 C-band centre frequency (5.405 GHz), in micrometres.
C_BAND_WAVELENGTH_UM = 299_792_458 / 5.405e9 * 1e6


@dataclass(frozen=True)
class Band:
    """One spectral band or polarisation."""

    name: str
    wavelength_um: float
    gsd_m: float
    common_name: str | None = None
    aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """Every name this band answers to, canonical first."""
        extra = (self.common_name,) if self.common_name else ()
        return (self.name, *self.aliases, *extra)


@dataclass(frozen=True)
class Sensor:
    """A sensor product: its bands in order and how stored values map to physical units.

    Physical value = stored value * ``scale`` + ``offset`` in ``units``.
    """

    name: str
    kind: SensorKind
    bands: tuple[Band, ...]
    units: str
    scale: float = 1.0
    offset: float = 0.0
    dtype: str = "float32"
    description: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def gsd_m(self) -> float:
        """The finest ground sampling distance among the bands."""
        return min(b.gsd_m for b in self.bands)

    def band(self, name: str) -> Band:
        """The band answering to ``name`` (canonical, alias or common name)."""
        key = normalise_band_name(name)
        for b in self.bands:
            if key in {normalise_band_name(n) for n in b.names()}:
                return b
        raise UnknownNameError(f"band of sensor {self.name}", name, self.band_names)

    def canonical(self, names: Iterable[str]) -> tuple[str, ...]:
        """Canonical names for ``names`` (each looked up by any of its names)."""
        return tuple(self.band(n).name for n in names)

    def rgb_bands(self) -> tuple[str, str, str] | None:
        """Canonical names of the red, green and blue bands, if the sensor has them."""
        try:
            r, g, b = (self.band(c).name for c in ("red", "green", "blue"))
        except UnknownNameError:
            return None
        return (r, g, b)


_SENSORS: dict[str, Sensor] = {}


def register_sensor(sensor: Sensor, *, overwrite: bool = False) -> Sensor:
    """Add ``sensor`` to the registry (users may register their own)."""
    keys = (sensor.name, *sensor.aliases)
    for key in keys:
        if key.lower() in _SENSORS and not overwrite:
            raise ValueError(f"sensor {key!r} is already registered; pass overwrite=True")
    for key in keys:
        _SENSORS[key.lower()] = sensor
    return sensor


def get_sensor(name: str | Sensor) -> Sensor:
    """Look a sensor up by name or alias (case-insensitive)."""
    if isinstance(name, Sensor):
        return name
    try:
        return _SENSORS[name.lower()]
    except KeyError:
        raise UnknownNameError("sensor", name, list_sensors()) from None


def find_sensor(name: str | Sensor | None) -> Sensor | None:
    """Like :func:`get_sensor`, but ``None`` for ``None`` or a name that is not registered
    (a dataset may name any sensor)."""
    if name is None:
        return None
    try:
        return get_sensor(name)
    except UnknownNameError:
        return None


def list_sensors() -> list[str]:
    """Canonical names of the registered sensors."""
    return sorted({s.name for s in _SENSORS.values()})


_BAND_NUMBER = re.compile(r"^B0*(\d+)(A?)$")


def normalise_band_name(name: str) -> str:
    """A comparison key: case-folded, with ``B1``/``B01``/``b01`` and ``B8A``/``B08A`` unified."""
    key = name.strip().upper().replace("-", "_").replace(" ", "_")
    m = _BAND_NUMBER.match(key)
    if m:
        return f"B{int(m.group(1)):02d}{m.group(2)}"
    return key


def match_bands(
    requested: Sequence[str],
    available: Sequence[str],
    *,
    sensor: Sensor | str | None = None,
    path: str | None = None,
) -> list[int]:
    """Indices into ``available`` of each name in ``requested``, matched by name.

    With a ``sensor``, a band may be requested by any of its names (``red`` finds ``B04``).
    Raises :class:`BandMismatchError` naming ``path``, the bands expected and found.
    """
    sens = get_sensor(sensor) if sensor is not None else None

    def keys(name: str) -> set[str]:
        out = {normalise_band_name(name)}
        if sens is not None:
            with contextlib.suppress(UnknownNameError):
                out |= {normalise_band_name(n) for n in sens.band(name).names()}
        return out

    avail_keys = [keys(a) for a in available]
    index: list[int] = []
    missing: list[str] = []
    for name in requested:
        want = keys(name)
        hits = [i for i, k in enumerate(avail_keys) if want & k]
        if not hits:
            missing.append(name)
        else:
            index.append(hits[0])
    if missing:
        raise BandMismatchError(path, requested, available, problem=f"missing bands {missing}")
    return index


def _s2_bands(with_b10: bool) -> tuple[Band, ...]:
    spec = [
        ("B01", 0.443, 60, "coastal"),
        ("B02", 0.490, 10, "blue"),
        ("B03", 0.560, 10, "green"),
        ("B04", 0.665, 10, "red"),
        ("B05", 0.705, 20, "rededge1"),
        ("B06", 0.740, 20, "rededge2"),
        ("B07", 0.783, 20, "rededge3"),
        ("B08", 0.842, 10, "nir"),
        ("B8A", 0.865, 20, "nir08"),
        ("B09", 0.945, 60, "water_vapour"),
        ("B10", 1.375, 60, "cirrus"),
        ("B11", 1.610, 20, "swir16"),
        ("B12", 2.190, 20, "swir22"),
    ]
    return tuple(
        Band(n, w, g, c, aliases=(n.replace("B0", "B"),) if n.startswith("B0") else ())
        for n, w, g, c in spec
        if with_b10 or n != "B10"
    )


def _landsat_oli_bands() -> tuple[Band, ...]:
    spec = [
        ("B1", 0.443, 30, "coastal"),
        ("B2", 0.482, 30, "blue"),
        ("B3", 0.561, 30, "green"),
        ("B4", 0.655, 30, "red"),
        ("B5", 0.865, 30, "nir08"),
        ("B6", 1.609, 30, "swir16"),
        ("B7", 2.201, 30, "swir22"),
        ("B8", 0.590, 15, "pan"),
        ("B9", 1.373, 30, "cirrus"),
    ]
    return tuple(Band(n, w, g, c) for n, w, g, c in spec)


def _register_builtins() -> None:
    register_sensor(
        Sensor(
            "sentinel2_l1c",
            "optical",
            _s2_bands(with_b10=True),
            units="TOA reflectance",
            scale=1e-4,
            dtype="uint16",
            description="Sentinel-2 MSI Level-1C, 13 bands, stored as reflectance x 10000",
            aliases=("s2", "s2_l1c", "sentinel2"),
        )
    )
    register_sensor(
        Sensor(
            "sentinel2_l2a",
            "optical",
            _s2_bands(with_b10=False),
            units="surface reflectance",
            scale=1e-4,
            dtype="uint16",
            description="Sentinel-2 MSI Level-2A, 12 bands (no B10), reflectance x 10000",
            aliases=("s2_l2a",),
        )
    )
    s1 = (
        Band("VV", C_BAND_WAVELENGTH_UM, 10, "vv"),
        Band("VH", C_BAND_WAVELENGTH_UM, 10, "vh"),
    )
    register_sensor(
        Sensor(
            "sentinel1_grd",
            "sar",
            s1,
            units="dB",
            description="Sentinel-1 GRD IW, VV and VH backscatter sigma0 in decibels",
            aliases=("s1", "s1_grd", "sentinel1", "sentinel1_grd_db"),
        )
    )
    register_sensor(
        Sensor(
            "sentinel1_grd_linear",
            "sar",
            s1,
            units="linear power",
            description="Sentinel-1 GRD IW, VV and VH backscatter sigma0 in linear power",
            aliases=("s1_linear",),
        )
    )
    register_sensor(
        Sensor(
            "sentinel1_wv",
            "sar",
            (Band("VV", C_BAND_WAVELENGTH_UM, 5, "vv"),),
            units="normalised radar cross-section",
            description="Sentinel-1 Wave Mode imagettes (20 x 20 km vignettes, VV, ~5 m pixels)",
            aliases=("s1_wv", "wavemode", "sentinel1_wave_mode"),
        )
    )
    register_sensor(
        Sensor(
            "landsat_oli",
            "optical",
            _landsat_oli_bands(),
            units="surface reflectance",
            scale=2.75e-5,
            offset=-0.2,
            dtype="uint16",
            description="Landsat 8/9 OLI (Collection 2 Level-2 scaling), 9 bands",
            aliases=("landsat8", "landsat9", "landsat_8_9_oli"),
        )
    )
    register_sensor(
        Sensor(
            "rgb",
            "optical",
            (
                Band("red", 0.665, 1.0, "red", aliases=("R",)),
                Band("green", 0.560, 1.0, "green", aliases=("G",)),
                Band("blue", 0.490, 1.0, "blue", aliases=("B",)),
            ),
            units="8-bit digital number",
            scale=1 / 255,
            dtype="uint8",
            description="Plain RGB imagery (aerial photographs, true-colour composites)",
            aliases=("aerial_rgb",),
        )
    )


_register_builtins()
