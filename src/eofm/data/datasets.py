"""Dataset kinds over real files. Every dataset yields the sample dict of :mod:`eofm.data.sample`.

- :class:`ClassificationFolder` (class sub-folders), :class:`ClassificationCSV`
- :class:`MultiLabelCSV`, :class:`MultiLabelJSON`, :class:`BigEarthNet` (one file per band)
- :class:`SegmentationDataset` (integer or colour-coded masks)
- :class:`ChangeDetectionDataset` (image pairs with a change mask)
- :class:`UnlabelledPool` (a glob), :class:`TorchGeoDataset` (any torchgeo dataset by class name)

Bands are selected by name (``bands=``); ``band_names=`` declares the file's order when the file
does not name its bands. Nodata pixels become NaN in ``image`` and False in ``valid``.
"""

from __future__ import annotations

import csv
import glob as globlib
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from eofm.data.readers import (
    RASTER_SUFFIXES,
    Raster,
    check_values,
    read_band_files,
    read_json,
    read_raster,
)
from eofm.data.sample import IGNORE_INDEX, Sample
from eofm.errors import DataError, EmptyDatasetError, MissingLabelError, UnknownNameError

Transform = Callable[[Sample], Sample]
OnError = Literal["raise", "skip"]

#: EuroSAT-MS GeoTIFFs store B8A last, not in wavelength order.
EUROSAT_MS_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)  # fmt: skip

#: Colours present in the Dubai aerial masks (they differ from its classes.json), mapped to
#: (class index, name); black border pixels are ignored.
DUBAI_COLOURS: dict[str, int] = {
    "#E2A929": 0,  # water
    "#8429F6": 1,  # land (unpaved area)
    "#6EC1E4": 2,  # road
    "#3C1098": 3,  # building
    "#FEDD3A": 4,  # vegetation
    "#9B9B9B": 5,  # unlabeled
    "#000000": IGNORE_INDEX,
}
DUBAI_CLASSES = ("water", "land", "road", "building", "vegetation", "unlabeled")

#: The 43 CORINE land-cover classes of BigEarthNet v1.0, in their usual order.
BIGEARTHNET_CLASSES_43 = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports",
    "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
    "Sport and leisure facilities", "Non-irrigated arable land", "Permanently irrigated land",
    "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland", "Moors and heathland", "Sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock", "Sparsely vegetated areas",
    "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes", "Salines", "Intertidal flats",
    "Water courses", "Water bodies", "Coastal lagoons", "Estuaries", "Sea and ocean",
)  # fmt: skip


def _hex_to_rgb(colour: str | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(colour, str):
        c = colour.lstrip("#")
        return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
    r, g, b = colour
    return (int(r), int(g), int(b))


class EODataset(Dataset[Sample]):
    """Shared machinery: band selection, value checks, error policy and transforms.

    With ``on_error="skip"`` a sample that cannot be read is skipped with a warning, counted in
    :attr:`skipped`, and the next readable sample is returned instead; :meth:`verify` checks
    every file up front and drops the bad ones.
    """

    def __init__(
        self,
        *,
        bands: Sequence[str] | None = None,
        band_names: Sequence[str] | None = None,
        sensor: str | None = None,
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_invalid_fraction: float = 1.0,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.requested_bands = tuple(bands) if bands is not None else None
        self.band_names = tuple(band_names) if band_names is not None else None
        self.sensor = sensor
        self.transform = transform
        self.on_error = on_error
        self.max_invalid_fraction = max_invalid_fraction
        self.skipped: dict[str, str] = {}
        self.class_names: tuple[str, ...] | None = None

    #: One record per sample: a path, or a tuple whose first item is the main path.
    records: Sequence[Any]

    # -- subclasses implement ``load`` and fill ``records`` ------------------------------
    def load(self, index: int) -> Sample:
        """Read sample ``index`` (no transform, no error policy)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def sample_path(self, index: int) -> str:
        """The main file of sample ``index``, for messages."""
        record = self.records[index]
        return str(record[0] if isinstance(record, tuple) else record)

    # -- shared --------------------------------------------------------------------------
    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                sample = self.load(i)
                break
            except DataError as err:
                if self.on_error == "raise":
                    raise
                path = self.sample_path(i)
                if path not in self.skipped:
                    self.skipped[path] = str(err)
                    warnings.warn(f"skipped {path}: {err}", stacklevel=2)
        else:
            raise EmptyDatasetError(None, f"none of the {n} samples could be read")
        return self.transform(sample) if self.transform else sample

    def verify(self, progress: bool = False) -> int:
        """Read every sample once, dropping (``on_error='skip'``) or raising on bad ones.

        Returns the number of samples dropped.
        """
        from tqdm.auto import tqdm

        bad: list[int] = []
        for i in tqdm(range(len(self)), desc="verifying", disable=not progress):
            try:
                self.load(i)
            except DataError as err:
                if self.on_error == "raise":
                    raise
                path = self.sample_path(i)
                self.skipped[path] = str(err)
                warnings.warn(f"skipped {path}: {err}", stacklevel=2)
                bad.append(i)
        self._drop(bad)
        if len(self) == 0:
            raise EmptyDatasetError(None, "no readable sample left after verification")
        return len(bad)

    def _drop(self, indices: Sequence[int]) -> None:
        """Remove samples by index; subclasses with a record list support this."""
        records = getattr(self, "records", None)
        if records is None:
            if indices:
                raise NotImplementedError(f"{type(self).__name__} cannot drop samples")
            return
        drop = set(indices)
        self.records = [r for i, r in enumerate(records) if i not in drop]

    def read_image(self, path: str | Path) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor]:
        """Read, select bands by name, check values; nodata becomes NaN."""
        raster = read_raster(
            path, bands=self.requested_bands, band_names=self.band_names, sensor=self.sensor
        )
        return self.to_tensor(raster)

    def to_tensor(self, raster: Raster) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor]:
        valid = check_values(raster, max_invalid_fraction=self.max_invalid_fraction)
        image = raster.data.astype(np.float32)
        if not valid.all():
            image[:, ~valid] = np.nan
        return torch.from_numpy(image), raster.bands, torch.from_numpy(valid)

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names of the images this dataset yields (reads the first sample if needed)."""
        if self.requested_bands is not None:
            return self.requested_bands
        return tuple(self[0]["bands"])

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


def _list_files(root: Path, extensions: Sequence[str]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)


class ClassificationFolder(EODataset):
    """Scene classification from class sub-folders: ``root/<class>/<image>``."""

    def __init__(
        self,
        root: str | Path,
        *,
        extensions: Sequence[str] = RASTER_SUFFIXES,
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "folder does not exist")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.class_names = tuple(classes) if classes is not None else tuple(found)
        unknown = [c for c in self.class_names if c not in found]
        if unknown:
            raise DataError(self.root, f"class folders {unknown} are missing; found {found}")
        self.records: list[tuple[Path, int]] = []
        for label, name in enumerate(self.class_names):
            self.records += [(p, label) for p in _list_files(self.root / name, extensions)]
        if not self.records:
            raise EmptyDatasetError(
                self.root, f"no image files ({', '.join(extensions)}) in class sub-folders"
            )

    def load(self, index: int) -> Sample:
        path, label = self.records[index]
        image, bands, valid = self.read_image(path)
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "label": torch.tensor(label),
            "path": str(path),
        }


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(path, "CSV file does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise EmptyDatasetError(path, "CSV file has no rows")
    return rows


def _require_columns(path: Path, rows: list[dict[str, str]], columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DataError(path, f"missing columns {missing}; columns are {list(rows[0])}")


class ClassificationCSV(EODataset):
    """Scene classification from a CSV with a path and a label column (and an optional split)."""

    def __init__(
        self,
        csv_path: str | Path,
        *,
        root: str | Path | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split: str | None = None,
        split_column: str = "split",
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.csv_path = Path(csv_path)
        self.root = Path(root) if root is not None else self.csv_path.parent
        rows = _read_csv(self.csv_path)
        _require_columns(self.csv_path, rows, [path_column, label_column])
        if split is not None:
            _require_columns(self.csv_path, rows, [split_column])
            rows = [r for r in rows if r[split_column] == split]
            if not rows:
                raise EmptyDatasetError(self.csv_path, f"no rows with {split_column}={split!r}")
        for line, r in enumerate(rows, start=2):
            if not (r.get(label_column) or "").strip():
                raise MissingLabelError(
                    self.csv_path, f"row {line} ({r[path_column]}) has no {label_column!r}"
                )
        self.class_names = (
            tuple(classes)
            if classes is not None
            else tuple(sorted({r[label_column] for r in rows}))
        )
        lookup = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted({r[label_column] for r in rows} - set(lookup))
        if unknown:
            raise DataError(self.csv_path, f"labels {unknown} are not among classes")
        self.records = [(self.root / r[path_column], lookup[r[label_column]]) for r in rows]

    load = ClassificationFolder.load


class _MultiLabelBase(EODataset):
    """Records of (path, multi-hot vector) over :attr:`class_names`."""

    records: list[tuple[Path, np.ndarray]]

    def load(self, index: int) -> Sample:
        path, target = self.records[index]
        image, bands, valid = self.read_image(path)
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "label": torch.from_numpy(target.copy()),
            "path": str(path),
        }

    def _encode(self, source: Path, names_per_item: Sequence[Sequence[str]]) -> list[np.ndarray]:
        assert self.class_names is not None
        lookup = {c: i for i, c in enumerate(self.class_names)}
        out = []
        for names in names_per_item:
            vec = np.zeros(len(self.class_names), dtype=np.float32)
            for n in names:
                if n not in lookup:
                    raise DataError(source, f"label {n!r} is not among the classes")
                vec[lookup[n]] = 1.0
            out.append(vec)
        return out


class MultiLabelCSV(_MultiLabelBase):
    """Multi-label classification from a CSV: either one 0/1 (or fraction) column per class,
    or one column listing class names separated by ``separator``."""

    def __init__(
        self,
        csv_path: str | Path,
        *,
        root: str | Path | None = None,
        path_column: str = "path",
        label_columns: Sequence[str] | None = None,
        labels_column: str | None = None,
        separator: str = ";",
        threshold: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.csv_path = Path(csv_path)
        self.root = Path(root) if root is not None else self.csv_path.parent
        rows = _read_csv(self.csv_path)
        _require_columns(self.csv_path, rows, [path_column])
        if labels_column is not None:
            _require_columns(self.csv_path, rows, [labels_column])
            lists = [
                [s.strip() for s in r[labels_column].split(separator) if s.strip()] for r in rows
            ]
            self.class_names = tuple(sorted({n for names in lists for n in names}))
            vectors = self._encode(self.csv_path, lists)
        else:
            cols = (
                list(label_columns) if label_columns else [c for c in rows[0] if c != path_column]
            )
            _require_columns(self.csv_path, rows, cols)
            self.class_names = tuple(cols)
            vectors = []
            for line, r in enumerate(rows, start=2):
                try:
                    values = [float(r[c]) for c in cols]
                except (TypeError, ValueError):
                    raise MissingLabelError(
                        self.csv_path,
                        f"row {line} ({r[path_column]}) has a missing or non-numeric label value",
                    ) from None
                vectors.append((np.asarray(values) > threshold).astype(np.float32))
        self.records = [(self.root / r[path_column], v) for r, v in zip(rows, vectors)]


class MultiLabelJSON(_MultiLabelBase):
    """Multi-label classification from JSON: ``{"path": ["label", ...]}`` or a list of
    ``{"path": ..., "labels": [...]}`` records."""

    def __init__(
        self,
        json_path: str | Path,
        *,
        root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.json_path = Path(json_path)
        self.root = Path(root) if root is not None else self.json_path.parent
        data = read_json(self.json_path)
        if isinstance(data, dict):
            items = list(data.items())
        else:
            try:
                items = [(d["path"], d["labels"]) for d in data]
            except (KeyError, TypeError):
                raise DataError(
                    self.json_path,
                    "expected {path: [labels]} or a list of {'path', 'labels'} records",
                ) from None
        if not items:
            raise EmptyDatasetError(self.json_path, "no samples")
        self.class_names = (
            tuple(classes)
            if classes is not None
            else tuple(sorted({n for _, names in items for n in names}))
        )
        vectors = self._encode(self.json_path, [names for _, names in items])
        self.records = [(self.root / p, v) for (p, _), v in zip(items, vectors)]


class BigEarthNet(_MultiLabelBase):
    """BigEarthNet v1 patch folders: one GeoTIFF per band (10/20/60 m, resampled onto one
    120 x 120 grid) and a ``*_labels_metadata.json`` with the CORINE labels."""

    def __init__(
        self,
        root: str | Path,
        *,
        modality: Literal["s2", "s1"] = "s2",
        size: int = 120,
        classes: Sequence[str] = BIGEARTHNET_CLASSES_43,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("sensor", "sentinel2_l2a" if modality == "s2" else "sentinel1_grd")
        super().__init__(**kwargs)
        self.root = Path(root)
        self.size = size
        self.class_names = tuple(classes)
        patches = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        if not patches:
            raise EmptyDatasetError(self.root, "no BigEarthNet patch folders")
        self.patches: list[tuple[Path, dict[str, Path]]] = []
        label_lists = []
        for patch in patches:
            label_file = patch / f"{patch.name}_labels_metadata.json"
            if not label_file.exists():
                raise MissingLabelError(label_file, "label file is missing")
            meta = read_json(label_file)
            if "labels" not in meta:
                raise MissingLabelError(label_file, "has no 'labels' entry")
            label_lists.append(meta["labels"])
            files = {}
            for f in patch.glob(f"{patch.name}_*.tif"):
                files[f.stem[len(patch.name) + 1 :]] = f
            self.patches.append((label_file, files))
        vectors = self._encode(self.root, label_lists)
        self.records = [(p, v) for p, v in zip(patches, vectors)]

    def _drop(self, indices: Sequence[int]) -> None:
        drop = set(indices)
        self.patches = [p for i, p in enumerate(self.patches) if i not in drop]
        super()._drop(indices)

    def load(self, index: int) -> Sample:
        path, target = self.records[index]
        _, files = self.patches[index]
        from eofm.data.sensors import get_sensor

        order = get_sensor(self.sensor or "sentinel2_l2a").band_names
        available = [b for b in order if b in files] or sorted(files)
        raster = read_band_files(
            {b: files[b] for b in available},
            bands=self.requested_bands,
            shape=(self.size, self.size),
        )
        raster.path = str(path)
        image, bands, valid = self.to_tensor(raster)
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "label": torch.from_numpy(target.copy()),
            "path": str(path),
        }


def _stem_key(path: Path, strip: str | None) -> str:
    stem = path.stem
    return re.sub(strip, "", stem) if strip else stem


class SegmentationDataset(EODataset):
    """Image + mask pairs matched by file stem.

    Masks are integer class maps, or colour-coded RGB images mapped through ``colour_table``
    (``{"#RRGGBB": class_index}``). ``mask_nodata`` values become :data:`IGNORE_INDEX`.
    ``strip`` is a regular expression removed from stems before pairing (e.g. ``_S2Hand$``).
    """

    def __init__(
        self,
        images: str | Path | Sequence[str | Path],
        masks: str | Path | Sequence[str | Path],
        *,
        colour_table: Mapping[str, int] | None = None,
        classes: Sequence[str] | None = None,
        mask_nodata: Sequence[int] = (),
        image_strip: str | None = None,
        mask_strip: str | None = None,
        extensions: Sequence[str] = RASTER_SUFFIXES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        image_files = self._collect(images, extensions)
        mask_files = self._collect(masks, extensions)
        self.records: list[tuple[Path, Path]] = []
        if not isinstance(images, (str, Path)) and not isinstance(masks, (str, Path)):
            # explicit lists are paired in order; their stems must still agree
            if len(image_files) != len(mask_files):
                raise MissingLabelError(
                    None, f"{len(image_files)} images but {len(mask_files)} masks were given"
                )
            for img, msk in zip(image_files, mask_files):
                if _stem_key(img, image_strip) != _stem_key(msk, mask_strip):
                    raise MissingLabelError(img, f"is paired with mask {msk} of another name")
                self.records.append((img, msk))
        else:
            by_key = {_stem_key(m, mask_strip): m for m in mask_files}
            for img in image_files:
                key = _stem_key(img, image_strip)
                if key not in by_key:
                    raise MissingLabelError(img, f"no mask with stem {key!r} found")
                self.records.append((img, by_key[key]))
        if not self.records:
            raise EmptyDatasetError(str(images), "no images found")
        self.colour_table = (
            {_hex_to_rgb(k): v for k, v in colour_table.items()} if colour_table else None
        )
        self.mask_nodata = tuple(mask_nodata)
        if classes is not None:
            self.class_names = tuple(classes)

    @staticmethod
    def _collect(spec: str | Path | Sequence[str | Path], extensions: Sequence[str]) -> list[Path]:
        if isinstance(spec, (str, Path)):
            p = Path(spec)
            if p.is_dir():
                return _list_files(p, extensions)
            return sorted(Path(f) for f in globlib.glob(str(spec), recursive=True))
        return [Path(s) for s in spec]

    @classmethod
    def from_csv(
        cls,
        csv_path: str | Path,
        *,
        image_column: str = "image",
        mask_column: str = "mask",
        root: str | Path | None = None,
        **kwargs: Any,
    ) -> SegmentationDataset:
        """Pairs listed in a CSV (paths relative to ``root``, default the CSV's folder)."""
        csv_path = Path(csv_path)
        base = Path(root) if root is not None else csv_path.parent
        rows = _read_csv(csv_path)
        _require_columns(csv_path, rows, [image_column, mask_column])
        for line, r in enumerate(rows, start=2):
            if not r[mask_column].strip():
                raise MissingLabelError(csv_path, f"row {line} has no mask")
        images = [base / r[image_column] for r in rows]
        masks = [base / r[mask_column] for r in rows]
        kwargs.setdefault("image_strip", ".*")  # the CSV pairs them; names may differ
        kwargs.setdefault("mask_strip", ".*")
        return cls(images, masks, **kwargs)

    def read_mask(self, path: Path) -> np.ndarray:
        raster = read_raster(path)
        data = raster.data
        if self.colour_table is not None:
            if data.shape[0] < 3:
                raise DataError(path, f"colour mask needs 3 bands, found {data.shape[0]}")
            rgb = data[:3].astype(np.int64)
            code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            out = np.full(code.shape, -2, dtype=np.int64)
            for (r, g, b), cls_idx in self.colour_table.items():
                out[code == ((r << 16) | (g << 8) | b)] = cls_idx
            if (out == -2).any():
                unknown = np.unique(code[out == -2])[:5]
                colours = [f"#{int(c):06X}" for c in unknown]
                raise DataError(path, f"mask has colours {colours} not in the colour table")
            return out
        if data.shape[0] != 1:
            raise DataError(
                path,
                f"integer mask must have 1 band, found {data.shape[0]}",
                "pass colour_table= for colour-coded masks",
            )
        mask: np.ndarray = data[0].astype(np.int64)
        for v in self.mask_nodata:
            mask[mask == v] = IGNORE_INDEX
        return mask

    def load(self, index: int) -> Sample:
        img_path, mask_path = self.records[index]
        image, bands, valid = self.read_image(img_path)
        mask = self.read_mask(mask_path)
        if mask.shape != tuple(image.shape[1:]):
            raise DataError(
                mask_path,
                f"mask shape {mask.shape} differs from image shape "
                f"{tuple(image.shape[1:])} of {img_path}",
            )
        mask_t = torch.from_numpy(mask)
        mask_t[~valid] = IGNORE_INDEX
        return {
            "image": image,
            "bands": bands,
            "valid": valid,
            "mask": mask_t,
            "path": str(img_path),
        }


class ChangeDetectionDataset(EODataset):
    """Bi-temporal pairs with a change mask: ``root/{A,B,label}/<same name>`` (LEVIR/OSCD-like).

    The mask is binarised (non-zero = change) unless ``binary=False``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        before: str = "A",
        after: str = "B",
        label: str = "label",
        binary: bool = True,
        extensions: Sequence[str] = RASTER_SUFFIXES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        dirs = [self.root / d for d in (before, after, label)]
        for d in dirs:
            if not d.is_dir():
                raise DataError(d, "folder does not exist")
        a_files = _list_files(dirs[0], extensions)
        if not a_files:
            raise EmptyDatasetError(dirs[0], "no images")
        b_map = {p.stem: p for p in _list_files(dirs[1], extensions)}
        m_map = {p.stem: p for p in _list_files(dirs[2], extensions)}
        self.records: list[tuple[Path, Path, Path]] = []
        for a in a_files:
            if a.stem not in b_map:
                raise DataError(a, f"no second-date image {a.stem!r} in {dirs[1]}")
            if a.stem not in m_map:
                raise MissingLabelError(a, f"no change mask {a.stem!r} in {dirs[2]}")
            self.records.append((a, b_map[a.stem], m_map[a.stem]))
        self.binary = binary
        self.class_names = ("no_change", "change") if binary else None

    def load(self, index: int) -> Sample:
        a, b, m = self.records[index]
        image, bands, valid = self.read_image(a)
        image2, bands2, valid2 = self.read_image(b)
        if bands2 != bands or image2.shape != image.shape:
            raise DataError(
                b,
                f"second date has bands {bands2} and shape {tuple(image2.shape)}; "
                f"first date {a} has {bands} and {tuple(image.shape)}",
            )
        mask = read_raster(m).data[0].astype(np.int64)
        if self.binary:
            mask = (mask > 0).astype(np.int64)
        if mask.shape != tuple(image.shape[1:]):
            raise DataError(m, f"mask shape {mask.shape} differs from image {tuple(image.shape)}")
        both = valid & valid2
        mask_t = torch.from_numpy(mask)
        mask_t[~both] = IGNORE_INDEX
        return {
            "image": image,
            "image2": image2,
            "bands": bands,
            "valid": both,
            "mask": mask_t,
            "path": str(a),
        }


class UnlabelledPool(EODataset):
    """Unlabelled images matched by a glob (``'archive/**/*.tif'``) or listed explicitly."""

    def __init__(self, pattern: str | Path | Sequence[str | Path], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(pattern, (str, Path)):
            p = Path(pattern)
            if p.is_dir():
                files = _list_files(p, RASTER_SUFFIXES)
            else:
                files = sorted(Path(f) for f in globlib.glob(str(pattern), recursive=True))
            files = [f for f in files if f.suffix.lower() in RASTER_SUFFIXES]
        else:
            files = [Path(f) for f in pattern]
        if not files:
            raise EmptyDatasetError(str(pattern), "matched no image files")
        self.records: list[Path] = files

    def load(self, index: int) -> Sample:
        path = self.records[index]
        image, bands, valid = self.read_image(path)
        return {"image": image, "bands": bands, "valid": valid, "path": str(path)}


class Sen1Floods11(SegmentationDataset):
    """Sen1Floods11 hand-labelled chips: ``S1``/``S2``/``Labels`` GeoTIFFs, -1 is nodata.

    ``modality="s1s2"`` stacks VV, VH and the 13 S2 bands into one image.
    """

    def __init__(
        self, root: str | Path, *, modality: Literal["s1", "s2", "s1s2"] = "s1", **kwargs: Any
    ) -> None:
        self.root = Path(root)
        self.modality = modality
        folder = "S2" if modality == "s2" else "S1"
        strip = "_S2Hand$" if modality == "s2" else "_S1Hand$"
        if modality == "s2":
            kwargs.setdefault("sensor", "sentinel2_l1c")  # the files name their bands B1..B12
        elif modality == "s1":
            kwargs.setdefault("sensor", "sentinel1_grd")
        super().__init__(
            self.root / folder,
            self.root / "Labels",
            image_strip=strip,
            mask_strip="_LabelHand$",
            mask_nodata=(-1,),
            classes=("not_water", "water"),
            **kwargs,
        )

    def read_image(self, path: str | Path) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor]:
        if self.modality != "s1s2":
            return super().read_image(path)
        p = Path(path)
        s1 = read_raster(p, sensor="sentinel1_grd")
        s2_path = self.root / "S2" / p.name.replace("_S1Hand", "_S2Hand")
        s2 = read_raster(s2_path, sensor="sentinel2_l1c")
        raster = Raster(
            np.concatenate([s1.data.astype(np.float32), s2.data.astype(np.float32)]),
            s1.bands + s2.bands,
            str(p),
            None,
        )
        if self.requested_bands is not None:
            raster = raster.select(self.requested_bands)
        return self.to_tensor(raster)


def dubai_segmentation(root: str | Path, **kwargs: Any) -> SegmentationDataset:
    """The Dubai aerial tiles (``Tile N/{images,masks}``) with its colour masks mapped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder does not exist")
    return SegmentationDataset(
        sorted(root.glob("Tile */images/*.jpg")),
        sorted(root.glob("Tile */masks/*.png")),
        colour_table=DUBAI_COLOURS,
        classes=DUBAI_CLASSES,
        image_strip=None,
        **kwargs,
    )


class TorchGeoDataset(EODataset):
    """Any torchgeo dataset by class name, its samples converted to eofm's form.

    Band names come from the torchgeo dataset's ``bands`` (or ``all_bands``) attribute, or
    from ``band_names``. ``download`` is passed through (it needs internet).
    """

    def __init__(
        self,
        name: str,
        root: str | Path,
        *,
        download: bool = False,
        dataset_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            import torchgeo.datasets as tgd
        except ImportError as err:  # pragma: no cover - depends on the install
            raise DataError(None, "torchgeo is not installed", "pip install 'eofm[geo]'") from err
        cls = getattr(tgd, name, None)
        if cls is None or not isinstance(cls, type):
            known = [n for n in dir(tgd) if isinstance(getattr(tgd, n), type)]
            raise UnknownNameError("torchgeo dataset", name, known)
        try:
            self.dataset = cls(root=str(root), download=download, **dict(dataset_kwargs or {}))
        except Exception as err:  # torchgeo raises DatasetNotFoundError and others
            raise DataError(root, f"torchgeo {name} could not be opened: {err}") from err
        self.name = name
        names = getattr(self.dataset, "bands", None) or getattr(self.dataset, "all_bands", None)
        self.source_bands = tuple(self.band_names or names or ())
        classes = getattr(self.dataset, "classes", None)
        if classes is not None:
            self.class_names = tuple(str(c) for c in classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_path(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def load(self, index: int) -> Sample:
        raw = self.dataset[index]
        image = raw["image"]
        arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if arr.ndim == 4:  # time series: keep the first date
            arr = arr[0]
        bands = self.source_bands or tuple(f"band_{i + 1}" for i in range(arr.shape[0]))
        if len(bands) != arr.shape[0]:
            bands = tuple(f"band_{i + 1}" for i in range(arr.shape[0]))
        raster = Raster(arr, tuple(bands), self.sample_path(index))
        if self.requested_bands is not None:
            raster = raster.select(self.requested_bands, sensor=self.sensor)
        tensor, names, valid = self.to_tensor(raster)
        out: Sample = {"image": tensor, "bands": names, "valid": valid, "path": raster.path}
        if "label" in raw:
            label = raw["label"]
            out["label"] = label if isinstance(label, torch.Tensor) else torch.tensor(label)
        if "mask" in raw:
            out["mask"] = torch.as_tensor(raw["mask"]).long().squeeze(0)
        return out
