"""A user with a torchgeo dataset on disk pretrains and evaluates on it by class name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eofm.cli.main import main
from eofm.models import load_model
from tests.conftest import shared_subdir
from tests.data.test_torchgeo import _eurosat_layout

pytest.importorskip("torchgeo")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.shared_data
def test_pretrain_and_evaluate_a_torchgeo_dataset_by_name(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shared_subdir(shared_data, "eurosat_ms_subset/geotorchai/eurosat")
    root = tmp_path / "eurosat"
    _eurosat_layout(src, root)
    spec = f"torchgeo:EuroSAT:{root}"
    run = tmp_path / "run"
    code = main(
        [
            "pretrain",
            "--config",
            str(REPO / "configs" / "simclr_tiny.yaml"),
            "--set",
            f"data.path={spec}",
            "data.bands=[B04,B03,B02,B08]",
            "data.batch_size=16",
            "trainer.max_steps=2",
            "--out",
            str(run),
            "--quiet",
        ]
    )
    assert code == 0
    model = load_model(run / "model.safetensors")
    assert model.bands == ("B04", "B03", "B02", "B08")
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--model",
            str(run / "model.safetensors"),
            "--task",
            "linear",
            "--data",
            spec,
            "--baselines",
            "random",
            "--threads",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert len(result["data"]["bands"]) == 13  # the data's bands; the model picks its own by name
    for entry in result["models"]:
        assert entry["bands"] == ["B04", "B03", "B02", "B08"]
    assert sum(result["data"]["splits"].values()) == 200
    assert len(result["data"]["classes"]) == 10
    assert [m["role"] for m in result["models"]] == ["model", "baseline"]
    capsys.readouterr()
