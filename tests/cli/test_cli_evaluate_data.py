"""``eofm evaluate`` on awkward folders: unnamed bands, mixed band counts, incomplete pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eofm.cli.main import main
from tests.cli.test_cli_errors import error_of
from tests.data.fakes import write_geotiff, write_png


def _evaluate(data: Path, out: Path, *extra: str, task: str = "linear") -> list[str]:
    return ["evaluate", "--model", "random:vit_test", "--task", task, "--data", str(data),
            "--out", str(out), "--cache-dir", str(out / "cache"), "--quiet", *extra]  # fmt: skip


def _class_folder(root: Path, bands: int, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c in ("sea", "ice"):
        for i in range(per_class):
            data = rng.normal(10 if c == "sea" else 20, 1, (bands, 16, 16)).astype("float32")
            write_geotiff(root / c / f"{c}_{i}.tif", data)
    return root


def test_band_names_name_the_bands_of_files_that_do_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _class_folder(tmp_path / "sar", bands=2)
    msg = error_of(capsys, *_evaluate(data, tmp_path / "a", "--bands", "VH"))
    assert "VH" in msg and "band_1" in msg  # unnamed: the files' bands are band_1, band_2
    out = tmp_path / "b"
    args = _evaluate(data, out, "--band-names", "VV,VH", "--bands", "VH", "--probe-epochs", "2")
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["data"]["bands"] == ["VH"]


def test_mixed_band_counts_name_a_file_of_each_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _class_folder(tmp_path / "mixed", bands=2)
    write_geotiff(data / "ice" / "ice_odd.tif", np.ones((1, 16, 16), "float32"))
    msg = error_of(capsys, *_evaluate(data, tmp_path / "out"))
    assert "mixes 2-band files (like " in msg and "and 1-band files (like " in msg
    assert "ice_odd.tif" in msg and "_0.tif" in msg  # the odd file and one of the others
    assert "found ['band_1']" in msg


def _change_folder(root: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        a = rng.integers(0, 255, (3, 32, 32)).astype("uint8")
        b = a.copy()
        b[:, 8:16, 8:16] = 255 - b[:, 8:16, 8:16]
        write_geotiff(root / "A" / f"t{i}.tif", a)
        write_geotiff(root / "B" / f"t{i}.tif", b)
        mask = np.zeros((32, 32), "uint8")
        mask[8:16, 8:16] = 255
        if i != 3:  # t3 has no change mask
            write_png(root / "label" / f"t{i}.png", mask)
    return root


def test_change_folder_with_a_missing_mask_stops_or_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _change_folder(tmp_path / "change")
    msg = error_of(capsys, *_evaluate(data, tmp_path / "a", task="change"))
    assert "t3.tif" in msg and "no change mask" in msg
    out = tmp_path / "b"
    args = _evaluate(data, out, "--skip-bad", "--epochs", "1", "--decoder", "fcn", task="change")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "skipped:   1 unreadable or incomplete samples (--skip-bad)" in printed
    assert "t3.tif" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["data"]["skipped"] == 1
    assert sum(result["data"]["splits"].values()) == 7  # the seven complete pairs
