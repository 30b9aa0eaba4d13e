"""Write synthetic scenes to disk as GeoTIFFs plus ``labels.csv``, or as eofm shards.

GeoTIFF layout (landcover)::

    out/s2/scene_000000.tif     13-band uint16 reflectance x 10000, band descriptions B01..B12
    out/s1/scene_000000.tif     2-band float32 sigma0 in dB, descriptions VV, VH
    out/masks/scene_000000.tif  1-band uint8 class indices
    out/labels.csv              id, s2, s1, mask, label (class name), one fraction column per class
    out/classes.json            class names, kind, sensors, seed, generator

Wave mode: ``out/wv/img_000000.tif`` (1-band float32 linear NRCS, description VV) and
``labels.csv`` with id, image, label, hs, wind_speed. Files are written by a background thread
while the next batch is generated.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy.typing as npt

from eofm.data.synthetic._common import check_args, progress_bar, resolve_class
from eofm.data.synthetic.landcover import CLASS_NAMES
from eofm.data.synthetic.render import S1_BANDS, S1_LOOKS, S2_BANDS
from eofm.data.synthetic.scenes import SceneSet, iter_landcover
from eofm.data.synthetic.wavemode import (
    WV_BANDS,
    WV_CLASS_NAMES,
    WV_LOOKS,
    WV_PIXEL_M,
    WaveModeSet,
    iter_wavemode,
    wavemode_chunk,
)
from eofm.errors import ConfigError

GENERATOR = "eofm.data.synthetic"
#: Scenes per row of the grid the scenes are laid out on (distinct, non-overlapping tiles).
_GRID = 100
_S2_CRS = "EPSG:32632"
_S2_ORIGIN = (300_000.0, 5_400_000.0)  # UTM 32N, Central Europe
_WV_ORIGIN = (-40.0, 50.0)  # lon, lat: North Atlantic
_METRES_PER_DEGREE = 111_320.0

Row = dict[str, Any]


def _dir_is_ours(root: Path) -> bool:
    meta = root / "classes.json"
    if not meta.is_file():
        return False
    try:
        return bool(json.loads(meta.read_text()).get("generator") == GENERATOR)
    except (OSError, ValueError, AttributeError):
        return False


def _prepare(root: Path, subdirs: Sequence[str]) -> None:
    """Create ``root``; clear a previous synthetic set there; refuse other non-empty folders."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not _dir_is_ours(root):
            raise ConfigError(
                f"{root} is not empty and holds no synthetic data set; choose an empty folder"
            )
        for name in ("s2", "s1", "masks", "wv"):
            if (root / name).is_dir():
                shutil.rmtree(root / name)
        for name in ("labels.csv", "classes.json", "index.json"):
            (root / name).unlink(missing_ok=True)
        for entry in root.glob("shard-*"):
            if entry.is_file():
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    for name in subdirs:
        (root / name).mkdir(exist_ok=True)


class _GeoTiffWriter:
    """Writes small GeoTIFFs fast: rasterio imported lazily, CRS objects cached."""

    def __init__(self) -> None:
        import rasterio
        from affine import Affine

        self._rasterio = rasterio
        self._affine = Affine
        self._crs: dict[str, Any] = {}

    def env(self) -> Any:
        """A rasterio environment to hold around many writes (one per thread)."""
        return self._rasterio.Env()

    def __call__(
        self,
        path: Path,
        array: npt.NDArray[Any],
        descriptions: Sequence[str],
        crs: str,
        origin: tuple[float, float],
        pixel: float,
    ) -> None:
        if crs not in self._crs:
            self._crs[crs] = self._rasterio.crs.CRS.from_string(crs)
        count, height, width = array.shape
        with self._rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=count,
            dtype=array.dtype.name,
            crs=self._crs[crs],
            transform=self._affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1]),
        ) as dst:
            dst.write(array)
            dst.descriptions = tuple(descriptions)


def _s2_origin(i: int, size: int) -> tuple[float, float]:
    step = size * 10.0
    return _S2_ORIGIN[0] + (i % _GRID) * step, _S2_ORIGIN[1] - (i // _GRID) * step


def _wv_origin(i: int, size: int) -> tuple[float, float]:
    step = size * WV_PIXEL_M / _METRES_PER_DEGREE * 2  # imagettes 2 tiles apart
    return _WV_ORIGIN[0] + (i % _GRID) * step, _WV_ORIGIN[1] - (i // _GRID) * step


def _write_landcover_chunk(
    write: _GeoTiffWriter, root: Path, start: int, part: SceneSet, width: int
) -> list[Row]:
    with write.env():
        return _landcover_rows(write, root, start, part, width)


def _landcover_rows(
    write: _GeoTiffWriter, root: Path, start: int, part: SceneSet, width: int
) -> list[Row]:
    rows: list[Row] = []
    size = part.masks.shape[-1]
    for j in range(len(part)):
        i = start + j
        name = f"scene_{i:0{width}d}"
        origin = _s2_origin(i, size)
        row: Row = {"id": name}
        if part.s2 is not None:
            row["s2"] = f"s2/{name}.tif"
            write(root / row["s2"], part.s2[j], S2_BANDS, _S2_CRS, origin, 10.0)
        if part.s1 is not None:
            row["s1"] = f"s1/{name}.tif"
            write(root / row["s1"], part.s1[j], S1_BANDS, _S2_CRS, origin, 10.0)
        row["mask"] = f"masks/{name}.tif"
        write(root / row["mask"], part.masks[j][None], ("class",), _S2_CRS, origin, 10.0)
        row["label"] = part.class_names[int(part.labels[j])]
        for c, cname in enumerate(part.class_names):
            row[cname] = f"{float(part.fractions[j, c]):.6f}"
        rows.append(row)
    return rows


def _write_wavemode_chunk(
    write: _GeoTiffWriter, root: Path, start: int, part: WaveModeSet, width: int
) -> list[Row]:
    with write.env():
        return _wavemode_rows(write, root, start, part, width)


def _wavemode_rows(
    write: _GeoTiffWriter, root: Path, start: int, part: WaveModeSet, width: int
) -> list[Row]:
    rows: list[Row] = []
    size = part.images.shape[-1]
    pixel_deg = WV_PIXEL_M / _METRES_PER_DEGREE
    for j in range(len(part)):
        i = start + j
        name = f"img_{i:0{width}d}"
        path = f"wv/{name}.tif"
        write(root / path, part.images[j], WV_BANDS, "EPSG:4326", _wv_origin(i, size), pixel_deg)
        rows.append(
            {
                "id": name,
                "image": path,
                "label": part.class_names[int(part.labels[j])],
                "hs": f"{float(part.hs[j]):.4f}",
                "wind_speed": f"{float(part.wind_speed[j]):.4f}",
            }
        )
    return rows


def _write_csv(path: Path, columns: Sequence[str], rows: list[Row]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _metadata(
    kind: str,
    n: int,
    size: int,
    seed: int,
    heavy_tail: float | None,
    dominant: str,
    fmt: str,
    sensors: Sequence[str],
) -> dict[str, Any]:
    if kind == "landcover":
        sens: dict[str, Any] = {}
        if "s2" in sensors:
            sens["s2"] = {
                "sensor": "sentinel2_l1c",
                "dir": "s2",
                "bands": list(S2_BANDS),
                "dtype": "uint16",
                "units": "TOA reflectance x 10000",
                "gsd_m": 10.0,
            }
        if "s1" in sensors:
            sens["s1"] = {
                "sensor": "sentinel1_grd",
                "dir": "s1",
                "bands": list(S1_BANDS),
                "dtype": "float32",
                "units": "dB",
                "looks": S1_LOOKS,
                "gsd_m": 10.0,
            }
        classes = list(CLASS_NAMES)
    else:
        sens = {
            "wv": {
                "sensor": "sentinel1_wv",
                "dir": "wv",
                "bands": list(WV_BANDS),
                "dtype": "float32",
                "units": "linear NRCS",
                "looks": WV_LOOKS,
                "gsd_m": WV_PIXEL_M,
            }
        }
        classes = list(WV_CLASS_NAMES)
    return {
        "classes": classes,
        "kind": kind,
        "format": fmt,
        "sensors": sens,
        "seed": seed,
        "n": n,
        "size": size,
        "heavy_tail": heavy_tail,
        "dominant_class": dominant,
        "generator": GENERATOR,
    }


def write_synthetic(
    out_dir: str | Path,
    kind: Literal["landcover", "wavemode"] = "landcover",
    n: int = 1000,
    size: int = 64,
    *,
    seed: int = 0,
    heavy_tail: float | None = None,
    fmt: Literal["geotiff", "shards"] = "geotiff",
    progress: bool = True,
    dominant_class: str | int | None = None,
    sensors: Sequence[str] = ("s2", "s1"),
) -> Path:
    """Generate ``n`` synthetic scenes of ``kind`` and write them under ``out_dir``.

    ``fmt="geotiff"`` writes one GeoTIFF per image plus ``labels.csv`` and ``classes.json``;
    ``fmt="shards"`` writes eofm shards (landcover: Sentinel-2 images with labels, masks and
    class fractions as targets; wavemode: images with labels and Hs as target). A folder
    holding an earlier synthetic set is replaced; any other non-empty folder is refused.
    Returns the output folder.
    """
    if kind not in ("landcover", "wavemode"):
        raise ConfigError(f"kind must be 'landcover' or 'wavemode', got {kind!r}")
    if fmt not in ("geotiff", "shards"):
        raise ConfigError(f"fmt must be 'geotiff' or 'shards', got {fmt!r}")
    check_args(n, size, seed, heavy_tail)
    names = CLASS_NAMES if kind == "landcover" else WV_CLASS_NAMES
    default = "cropland" if kind == "landcover" else "pure_ocean_waves"
    dominant = names[resolve_class(default if dominant_class is None else dominant_class, names)]
    if kind == "landcover" and fmt == "shards":
        sensors = ("s2",)
    root = Path(out_dir)
    if fmt == "shards":
        _write_shards(root, kind, n, size, seed, heavy_tail, dominant, progress)
    elif kind == "landcover":
        _write_landcover(root, n, size, seed, heavy_tail, dominant, sensors, progress)
    else:
        _write_wavemode(root, n, size, seed, heavy_tail, dominant, progress)
    meta = _metadata(kind, n, size, seed, heavy_tail, dominant, fmt, sensors)
    (root / "classes.json").write_text(json.dumps(meta, indent=1))
    return root


def _drain(pending: Future[list[Row]] | None, rows: list[Row], bar: Any) -> None:
    if pending is not None:
        done = pending.result()
        rows.extend(done)
        bar.update(len(done))


def _write_landcover(
    root: Path,
    n: int,
    size: int,
    seed: int,
    heavy_tail: float | None,
    dominant: str,
    sensors: Sequence[str],
    progress: bool,
) -> None:
    batches = iter_landcover(
        n, size, seed=seed, heavy_tail=heavy_tail, dominant_class=dominant, sensors=sensors
    )
    which = tuple(s.lower() for s in ([sensors] if isinstance(sensors, str) else sensors))
    _prepare(root, [*[s for s in ("s2", "s1") if s in which], "masks"])
    write = _GeoTiffWriter()
    width = max(6, len(str(n - 1)))
    rows: list[Row] = []
    pending: Future[list[Row]] | None = None
    with progress_bar(n, progress, "writing scenes") as bar, ThreadPoolExecutor(1) as pool:
        for start, part in batches:
            _drain(pending, rows, bar)  # at most one batch waits for the disk
            pending = pool.submit(_write_landcover_chunk, write, root, start, part, width)
        _drain(pending, rows, bar)
    columns = ["id", *[s for s in ("s2", "s1") if s in which], "mask", "label", *CLASS_NAMES]
    _write_csv(root / "labels.csv", columns, rows)


def _write_wavemode(
    root: Path,
    n: int,
    size: int,
    seed: int,
    heavy_tail: float | None,
    dominant: str,
    progress: bool,
) -> None:
    batches = iter_wavemode(n, size, seed=seed, heavy_tail=heavy_tail, dominant_class=dominant)
    _prepare(root, ["wv"])
    write = _GeoTiffWriter()
    width = max(6, len(str(n - 1)))
    rows: list[Row] = []
    pending: Future[list[Row]] | None = None
    with progress_bar(n, progress, "writing imagettes") as bar, ThreadPoolExecutor(1) as pool:
        for index, start, _, labels in batches:
            part = wavemode_chunk(seed, index, labels, size)
            _drain(pending, rows, bar)
            pending = pool.submit(_write_wavemode_chunk, write, root, start, part, width)
        _drain(pending, rows, bar)
    _write_csv(root / "labels.csv", ["id", "image", "label", "hs", "wind_speed"], rows)


def _write_shards(
    root: Path,
    kind: str,
    n: int,
    size: int,
    seed: int,
    heavy_tail: float | None,
    dominant: str,
    progress: bool,
) -> None:
    from eofm.data.shards import ShardWriter

    _prepare(root, [])
    with progress_bar(n, progress, "writing shards") as bar:
        if kind == "landcover":
            width = max(6, len(str(n - 1)))
            with ShardWriter(
                root, S2_BANDS, sensor="sentinel2_l1c", class_names=CLASS_NAMES
            ) as writer:
                for start, part in iter_landcover(
                    n,
                    size,
                    seed=seed,
                    heavy_tail=heavy_tail,
                    dominant_class=dominant,
                    sensors=("s2",),
                ):
                    assert part.s2 is not None
                    writer.add_batch(
                        part.s2,
                        labels=part.labels,
                        masks=part.masks,
                        targets=part.fractions,
                        paths=[f"scene_{start + j:0{width}d}" for j in range(len(part))],
                    )
                    bar.update(len(part))
        else:
            width = max(6, len(str(n - 1)))
            with ShardWriter(
                root, WV_BANDS, sensor="sentinel1_wv", class_names=WV_CLASS_NAMES
            ) as writer:
                for index, start, _, labels in iter_wavemode(
                    n, size, seed=seed, heavy_tail=heavy_tail, dominant_class=dominant
                ):
                    wv = wavemode_chunk(seed, index, labels, size)
                    writer.add_batch(
                        wv.images,
                        labels=wv.labels,
                        targets=wv.hs,
                        paths=[f"img_{start + j:0{width}d}" for j in range(len(wv))],
                    )
                    bar.update(len(wv))
