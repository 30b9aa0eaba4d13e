from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from eofm.cli.main import main
from tests.conftest import shared_subdir
from tests.data.fakes import class_folder


def test_inspect_prints_summary_and_writes_preview(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = class_folder(tmp_path / "ds", ["Forest", "Water"], per_class=3)
    preview = tmp_path / "p.png"
    assert main(["data", "inspect", str(root), "--preview", str(preview), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "samples:   6" in out and "Forest" in out and "B01" in out
    assert "4x16x16 x6" in out
    with Image.open(preview) as img:
        assert img.size[0] > 100


def test_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(tmp_path / "missing"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eofm: error:") and "missing" in err and "Traceback" not in err
    root = class_folder(tmp_path / "ds", ["A"], per_class=1)
    assert main(["data", "inspect", str(root), "--bands", "B09", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing bands ['B09']" in err and "A_0.tif" in err


def test_sensors_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sensors", "-v"]) == 0
    out = capsys.readouterr().out
    assert "sentinel2_l1c" in out and "B8A" in out and "sentinel1_wv" in out


@pytest.mark.shared_data
def test_inspect_real_eurosat_ms(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = shared_subdir(shared_data, "eurosat_ms_subset/geotorchai/eurosat")
    bands = "B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A"
    code = main(
        [
            "data",
            "inspect",
            str(root),
            "--band-names",
            bands,
            "--sensor",
            "s2",
            "--preview",
            str(tmp_path / "ms.png"),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "samples:   200" in out and "SeaLake" in out and "13x64x64 x200" in out
    assert (tmp_path / "ms.png").stat().st_size > 10_000
