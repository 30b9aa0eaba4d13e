"""Readers fuzzed: random bytes, mutated and truncated files, wrong dtypes, empty and enormous
dimensions. Every input either reads as a raster or raises a DataError naming the file; no
other exception, no crash, no hang, and nothing large is allocated for a tiny file."""

from __future__ import annotations

import io
import pickle
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import eofm.data.readers as readers
from eofm.data.readers import read_raster
from eofm.errors import CorruptFileError, DataError
from tests.data.fakes import band_ramp, write_geotiff, write_png
from tests.reliability.conftest import Record

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: No single read may take longer than this (a hang detector: real reads take milliseconds).
SLOW_S = 20.0
#: Peak Python/NumPy allocation allowed while refusing a tiny file with an enormous header.
SMALL_PEAK = 32 * 2**20


class Tally:
    """What a series of fuzzed reads did: error types, a sample message, the slowest read."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.formats: Counter[str] = Counter()
        self.sample: dict[str, str] = {}
        self.slowest = 0.0

    def attempt(self, path: Path) -> str:
        """Read ``path``; assert the outcome is a raster or a DataError naming the file."""
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raster = read_raster(path)
        except DataError as err:
            kind = type(err).__name__
            assert str(path) in str(err), f"{kind} does not name the file: {err}"
            self.sample.setdefault(kind, str(err))
        else:
            kind = "read"
            assert raster.data.ndim == 3 and raster.data.size > 0
            assert raster.data.dtype.kind in "biuf"
            assert len(raster.bands) == raster.data.shape[0]
        elapsed = time.perf_counter() - t0
        self.slowest = max(self.slowest, elapsed)
        assert elapsed < SLOW_S, f"{path} took {elapsed:.1f} s"
        self.kinds[kind] += 1
        self.formats[path.suffix.lstrip(".")] += 1
        return kind

    def summary(self) -> str:
        n = sum(self.kinds.values())
        counts = ", ".join(f"{v} {k}" for k, v in self.kinds.most_common())
        formats = ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items()))
        example = next(iter(self.sample.values()), "")
        text = f"{n} inputs ({formats}): {counts}; no other exception"
        text += f"; slowest read {self.slowest:.2f} s"
        return text + (f"; e.g. '{example}'" if example else "")


# --------------------------------------------------------------------------------------------
# seed files in every format


def _seeds(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    data = band_ramp(3, 16, 16)
    seeds: dict[str, bytes] = {}
    seeds["tif"] = write_geotiff(root / "s.tif", data, descriptions=["a", "b", "c"]).read_bytes()
    seeds["png"] = write_png(root / "s.png", (data[0] % 256).astype(np.uint8)).read_bytes()
    rgb = np.stack([(data[i] % 256).astype(np.uint8) for i in range(3)], axis=-1)
    Image.fromarray(rgb).save(root / "s.jpg")
    seeds["jpg"] = (root / "s.jpg").read_bytes()
    np.save(root / "s.npy", data)
    seeds["npy"] = (root / "s.npy").read_bytes()
    np.savez_compressed(root / "s.npz", image=data, bands=np.array(["a", "b", "c"]))
    seeds["npz"] = (root / "s.npz").read_bytes()
    ds = xr.Dataset(
        {"data": (("band", "y", "x"), data.astype("float32"))}, coords={"band": ["a", "b", "c"]}
    )
    ds.to_netcdf(root / "s3.nc", engine="scipy", format="NETCDF3_64BIT")
    seeds["nc3"] = (root / "s3.nc").read_bytes()
    ds.to_netcdf(root / "s4.nc", engine="h5netcdf")
    seeds["nc4"] = (root / "s4.nc").read_bytes()
    return seeds


SUFFIX = {"tif": ".tif", "png": ".png", "jpg": ".jpg", "npy": ".npy", "npz": ".npz"}
SUFFIX.update({"nc3": ".nc", "nc4": ".nc"})
KINDS = sorted(SUFFIX)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def seeds(workdir: Path) -> dict[str, bytes]:
    return _seeds(workdir / "seeds")


@pytest.fixture(scope="module", autouse=True)
def _quick_hdf5_timeout() -> Iterator[None]:
    """A shorter limit for the NetCDF-4/HDF5 helper process, so a hang fails fast."""
    old = readers.HDF5_TIMEOUT_S
    readers.HDF5_TIMEOUT_S = 15.0
    yield
    readers.HDF5_TIMEOUT_S = old


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def write(self, suffix: str, data: bytes) -> Path:
        self.n += 1
        path = self.root / f"f{self.n:05d}{suffix}"
        path.write_bytes(data)
        return path


def test_seed_files_read(seeds: dict[str, bytes], workdir: Path) -> None:
    files = Files(workdir)
    for kind in KINDS:
        raster = read_raster(files.write(SUFFIX[kind], seeds[kind]))
        assert raster.data.shape[1:] == (16, 16), kind


def test_random_bytes(workdir: Path, record: Record) -> None:
    files = Files(workdir / "random")
    files.root.mkdir()
    tally = Tally()

    @FUZZ
    @given(kind=st.sampled_from(KINDS), data=st.binary(min_size=1, max_size=600))
    def run(kind: str, data: bytes) -> None:
        tally.attempt(files.write(SUFFIX[kind], data))

    run()
    assert tally.kinds["read"] == 0  # random bytes are never a valid raster
    record("readers", "random bytes (1-600) named .tif/.png/.jpg/.npy/.npz/.nc", tally.summary())


def test_mutated_files(seeds: dict[str, bytes], workdir: Path, record: Record) -> None:
    files = Files(workdir / "mutated")
    files.root.mkdir()
    tally = Tally()

    @FUZZ
    @given(
        kind=st.sampled_from(KINDS),
        edits=st.lists(
            st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
            min_size=1,
            max_size=24,
        ),
        header=st.booleans(),
    )
    def run(kind: str, edits: list[tuple[float, int]], header: bool) -> None:
        data = bytearray(seeds[kind])
        span = min(len(data), 512) if header else len(data)  # headers hold most structure
        for where, value in edits:
            data[int(where * span)] = value
        tally.attempt(files.write(SUFFIX[kind], bytes(data)))

    run()
    record("readers", "valid files of every format with 1-24 bytes overwritten", tally.summary())


def test_truncated_files(seeds: dict[str, bytes], workdir: Path, record: Record) -> None:
    files = Files(workdir / "truncated")
    files.root.mkdir()
    tally = Tally()

    @FUZZ
    @given(kind=st.sampled_from(KINDS), keep=st.floats(0, 1, exclude_min=True, exclude_max=True))
    def run(kind: str, keep: float) -> None:
        data = seeds[kind]
        tally.attempt(files.write(SUFFIX[kind], data[: max(1, int(keep * len(data)))]))

    run()
    record("readers", "valid files of every format cut at a random byte", tally.summary())


# --------------------------------------------------------------------------------------------
# dtypes


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize(
    "dtype", ["complex64", "<U4", "datetime64[s]", "V8", "object", [("a", "<f4"), ("b", "<i2")]]
)
def test_npy_with_unsupported_dtypes(tmp_path: Path, dtype: Any, record: Record) -> None:
    marker = tmp_path / "marker"
    if dtype == "object":
        arr = np.empty((1, 2, 2), dtype=object)
        arr[0, 0, 0] = _Payload(marker)
    else:
        arr = np.zeros((1, 2, 2), dtype=np.dtype(dtype))
    np.save(tmp_path / "a.npy", arr, allow_pickle=True)
    np.savez(tmp_path / "a.npz", image=arr, allow_pickle=True)
    for name in ("a.npy", "a.npz"):
        with pytest.raises(DataError, match=name) as err:
            read_raster(tmp_path / name)
        assert "dtype" in str(err.value)
    assert not marker.exists()  # an object array's pickle is never unpickled
    record("readers", f".npy/.npz holding dtype {np.dtype(dtype)}", str(err.value))


@pytest.mark.parametrize("dtype", ["complex64", "str", "datetime64[ns]"])
def test_netcdf_with_unsupported_dtypes(tmp_path: Path, dtype: str, record: Record) -> None:
    if dtype == "str":
        values: Any = np.full((1, 2, 2), "ab")
    elif dtype == "complex64":
        values = np.zeros((1, 2, 2), np.complex64)
    else:
        values = np.full((1, 2, 2), np.datetime64("2020-01-01", "ns"))
    ds = xr.Dataset({"data": (("band", "y", "x"), values)})
    ds.to_netcdf(tmp_path / "a.nc", engine="h5netcdf", invalid_netcdf=True)
    with pytest.raises(DataError, match=r"a\.nc") as err:
        read_raster(tmp_path / "a.nc")
    assert "dtype" in str(err.value)
    record("readers", f"NetCDF-4 variable of dtype {dtype}", str(err.value))


def test_geotiff_complex(tmp_path: Path, record: Record) -> None:
    path = tmp_path / "c.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=4, count=1, dtype="complex64"
    ) as dst:
        dst.write(np.zeros((1, 4, 4), np.complex64))
    with pytest.raises(DataError, match=r"c\.tif.*unsupported") as err:
        read_raster(path)
    record("readers", "GeoTIFF of complex samples", str(err.value))


# --------------------------------------------------------------------------------------------
# zero-size and enormous dimensions: refused before any allocation


def _npy_bytes(shape: tuple[int, ...], descr: str = "<f4", data: bytes = b"") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _png_bytes(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_with_size(seed: bytes, width: int, height: int) -> bytes:
    data = bytearray(seed)
    i = 2
    while i < len(data):  # find the start-of-frame marker and patch height/width
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def _peak_during(fn: Any) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        fn()
    except BaseException as err:
        return err, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return None, 0


DIMS = st.sampled_from([0, 1, 7, 65_535, 2**24, 2**31 - 1, 2**40])


def test_enormous_or_empty_npy_and_npz_headers(workdir: Path, record: Record) -> None:
    files = Files(workdir / "dims")
    files.root.mkdir()
    tally = Tally()

    @FUZZ
    @given(shape=st.tuples(DIMS, DIMS, DIMS) | st.tuples(DIMS, DIMS), npz=st.booleans())
    def run(shape: tuple[int, ...], npz: bool) -> None:
        if 0 not in shape and int(np.prod(shape, dtype=np.float64)) <= 64:
            return  # small enough to be read for real: not this test's subject
        body = _npy_bytes(shape, data=b"\x00" * 64)
        if npz:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("image.npy", body)
            path = files.write(".npz", buf.getvalue())
        else:
            path = files.write(".npy", body)
        err, peak = _peak_during(lambda: read_raster(path))
        assert isinstance(err, DataError) and str(path) in str(err), err
        assert peak < SMALL_PEAK, f"{peak / 2**20:.0f} MiB allocated for {shape}"
        tally.attempt(path)

    run()
    assert tally.kinds["read"] == 0
    record(
        "readers",
        "tiny .npy/.npz whose header claims shapes with 0 or up to 2^40 per dimension",
        tally.summary() + f"; peak allocation while refusing < {SMALL_PEAK // 2**20} MiB",
    )


@pytest.mark.parametrize("size", [(0, 8), (8, 0), (70_000, 70_000), (2**31 - 1, 2**31 - 1)])
def test_png_header_sizes(tmp_path: Path, size: tuple[int, int], record: Record) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes(*size))
    err, peak = _peak_during(lambda: read_raster(path))
    assert isinstance(err, DataError) and "big.png" in str(err), err
    assert peak < SMALL_PEAK
    record(
        "readers",
        f"PNG header of {size[0]} x {size[1]} px in {path.stat().st_size} bytes",
        str(err),
    )


@pytest.mark.parametrize("size", [(10_000, 10_000), (30_000, 30_000), (65_535, 65_535)])
def test_jpeg_header_sizes(
    seeds: dict[str, bytes], tmp_path: Path, size: tuple[int, int], record: Record
) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_with_size(seeds["jpg"], *size))
    err, peak = _peak_during(lambda: read_raster(path))
    assert isinstance(err, DataError) and "big.jpg" in str(err), err
    assert peak < SMALL_PEAK
    record(
        "readers",
        f"JPEG header of {size[0]} x {size[1]} px in {path.stat().st_size} bytes",
        str(err),
    )


def test_sparse_geotiff_and_netcdf_over_the_limit(tmp_path: Path, record: Record) -> None:
    tif = tmp_path / "huge.tif"
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=100_000,
        height=100_000,
        count=1,
        dtype="uint8",
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        sparse_ok=True,
    ) as dst:
        dst.write(np.ones((1, 256, 256), np.uint8), window=((0, 256), (0, 256)))
    nc = tmp_path / "huge.nc"
    xr.Dataset({"data": (("band", "y", "x"), np.zeros((1, 4, 4), np.float32))}).to_netcdf(
        nc, engine="h5netcdf"
    )
    import h5netcdf

    with h5netcdf.File(nc, "a") as f:  # a fill-value variable of 10^10 values, a few KB on disk
        f.dimensions.update({"y2": 100_000, "x2": 100_000})
        f.create_variable("big", ("band", "y2", "x2"), "f4", chunks=(1, 256, 256))
    for path in (tif, nc):
        assert path.stat().st_size < 2_000_000
        err, peak = _peak_during(lambda p=path: read_raster(p))
        if path is nc:  # the first variable with a band dimension is the small one
            assert err is None
            err, peak = _peak_during(lambda: readers.read_xarray(nc, variable="big"))
        assert isinstance(err, DataError) and "too large" in str(err), err
        assert peak < SMALL_PEAK
        record(
            "readers",
            f"{path.suffix} declaring more than {readers.MAX_ELEMENTS} values "
            f"({path.stat().st_size} bytes on disk)",
            str(err),
        )


def test_the_byte_limit_refuses_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    path = write_geotiff(tmp_path / "a.tif", band_ramp(4, 64, 64))
    monkeypatch.setattr(readers, "MAX_BYTES", 4 * 64 * 64 * 2 - 1)  # one byte short
    with pytest.raises(DataError, match="too large to read at once") as err:
        read_raster(path)
    assert read_raster(path, window=(0, 0, 32, 32)).data.shape == (4, 32, 32)
    record("readers", "GeoTIFF one byte over readers.MAX_BYTES", str(err.value))


def test_truncated_npy_is_refused_from_its_header(tmp_path: Path, record: Record) -> None:
    path = tmp_path / "cut.npy"
    path.write_bytes(_npy_bytes((3, 64, 64), data=b"\x00" * 1000))
    err, peak = _peak_during(lambda: read_raster(path))
    assert isinstance(err, CorruptFileError) and "truncated" in str(err)
    assert peak < SMALL_PEAK
    record("readers", ".npy header (3, 64, 64) float32 with 1000 bytes of data", str(err))


def test_npy_object_header_pickle_is_not_executed(tmp_path: Path, record: Record) -> None:
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Payload(marker))
    path = tmp_path / "evil.npy"
    path.write_bytes(_npy_bytes((1, 1, 1), descr="|O", data=payload))
    with pytest.raises(DataError, match="unsupported dtype") as err:
        read_raster(path)
    assert not marker.exists()
    record("readers", ".npy of dtype object whose pickle would write a file", str(err.value))


# --------------------------------------------------------------------------------------------
# files that fuzzing found to crash or hang the C libraries (kept as regression inputs)

DATA = Path(__file__).parent / "data"
SEGFAULT = DATA / "netcdf3_crashes_netcdf4.nc"  # a NetCDF-3 file with a few bytes changed
HANG = DATA / "hdf5_hangs_h5py.nc"  # a NetCDF-4 file whose DIMENSION_LIST heap is corrupt


def test_files_that_crash_or_hang_the_c_libraries(
    monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    with pytest.raises(CorruptFileError, match="netcdf3_crashes_netcdf4") as err:
        read_raster(SEGFAULT)
    record(
        "readers",
        "NetCDF-3 file (found by fuzzing) on which the netCDF4 C library segfaults",
        f"read with the pure-Python scipy backend instead: {err.value}",
    )
    monkeypatch.setattr(readers, "HDF5_TIMEOUT_S", 5.0)
    t0 = time.perf_counter()
    with pytest.raises(CorruptFileError, match="did not finish within 5 s") as err:
        read_raster(HANG)
    seconds = time.perf_counter() - t0
    assert seconds < 30
    record(
        "readers",
        "NetCDF-4 file (found by fuzzing) on which HDF5 loops forever holding the GIL",
        f"the helper process was stopped after the time limit ({seconds:.1f} s): {err.value}",
    )


@pytest.mark.slow
def test_those_files_really_crash_and_hang_the_libraries(tmp_path: Path, record: Record) -> None:
    """Without eofm's guards: netCDF4 dies with SIGSEGV, h5py never returns."""
    import subprocess
    import sys

    crash = subprocess.run(
        [sys.executable, "-c", f"import xarray; xarray.open_dataset({str(SEGFAULT)!r}, "
         "engine='netcdf4').load()"],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert crash.returncode == -11
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-c", f"import h5py; f = h5py.File({str(HANG)!r}); "
             "f['_nc4_non_coord_x'].attrs['DIMENSION_LIST']"],
            capture_output=True,
            timeout=20,
        )  # fmt: skip
    record(
        "readers",
        "the same two files opened directly with netCDF4 / h5py (no eofm guard)",
        "netCDF4: the interpreter died with SIGSEGV; h5py: still reading after 20 s (killed)",
    )
