"""Every protocol end to end on a tiny model and small synthetic data; reports and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from eofm.cli.main import main
from eofm.errors import MissingLabelError, UnknownNameError
from eofm.evaluation import TASKS, run_evaluation
from eofm.models import create_backbone

LANDCOVER = "synthetic:landcover:150:32"


def _check(result: dict[str, Any], keys: list[str]) -> dict[str, float]:
    metrics = result["models"][0]["metrics"]
    for k in keys:
        assert k in metrics, metrics
        assert metrics[k] == metrics[k]  # not NaN
    return metrics


def test_knn_and_linear_with_report(quick: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "linear"
    rgb = create_backbone("vit_test", img_size=32)
    ckpt = tmp_path / "rgb.pth"
    torch.save(rgb.model.state_dict(), ckpt)
    result = run_evaluation(
        "random:vit_test",
        "linear",
        LANDCOVER,
        out_dir=out,
        baselines=[f"rgb:{ckpt}"],
        probe_epochs=20,
        **quick,
    )
    names = [m["name"] for m in result["models"]]
    assert len(names) == 2 and names[1].startswith("rgb")
    m = _check(result, ["top1", "balanced_accuracy"])
    assert m["top1"] > 1 / 6  # better than chance on land cover, even at random init
    for f in ("results.json", "report.md", "report.html"):
        assert (out / f).exists()
    report = (out / "report.md").read_text()
    assert "| model | spec | top1 | balanced_accuracy | seconds |" in report
    assert "Per class" in report and "| water |" in report
    assert "plots/per_class.png" in report
    plots = result["models"][0]["plots"]
    for key in ("confusion_matrix", "embedding_map"):
        assert (out / plots[key]).exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"][0]["metrics"]["top1"] == pytest.approx(m["top1"])
    knn = run_evaluation("random:vit_test", "knn", LANDCOVER, k=10, **quick)
    _check(knn, ["top1", "balanced_accuracy"])
    assert knn["models"][0]["details"]["features_cached"]  # same model + data: cache hit


def test_multilabel_linear(quick: dict[str, Any]) -> None:
    from eofm.evaluation.data import resolve_data

    spec = "synthetic:multilabel:150:32"
    data = resolve_data(spec, "classification", cache_dir=quick["cache_dir"])
    assert data.kind == "multilabel" and data.num_classes == 6
    result = run_evaluation(
        "random:resnet_test", "linear", spec, probe_epochs=10, lrs=[1e-2], wds=[0.0], **quick
    )
    m = _check(result, ["map_micro", "map_macro"])
    assert 0 < m["map_macro"] <= 1
    assert result["models"][0]["details"]["per_class"]["water"]["positives"] > 0


def test_finetune_fractions(quick: dict[str, Any]) -> None:
    result = run_evaluation(
        "random:vit_test",
        "finetune",
        LANDCOVER,
        fractions=[0.1, 1.0],
        seeds=2,
        epochs=1,
        train_batch_size=16,
        **quick,
    )
    m = _check(result, ["top1@0.1", "top1@1"])
    d = result["models"][0]["details"]
    assert set(d["fractions"]) == {"0.1", "1"}
    runs = d["runs"]
    assert len(runs) == 4 and {r["seed"] for r in runs} == {0, 1}
    small = [r["train_samples"] for r in runs if r["fraction"] == 0.1]
    assert all(n < 30 for n in small)
    assert "top1_std" in d["fractions"]["0.1"] and 0 <= m["top1@1"] <= 1


@pytest.mark.parametrize("decoder", ["linear", "upernet"])
def test_segmentation(quick: dict[str, Any], tmp_path: Path, decoder: str) -> None:
    result = run_evaluation(
        "random:resnet_test",
        "segmentation",
        "synthetic:landcover:40:32",
        decoder=decoder,
        epochs=2,
        out_dir=tmp_path,
        overlays=2,
        **quick,
    )
    m = _check(result, ["miou", "pixel_accuracy"])
    assert 0 <= m["miou"] <= 1
    assert (tmp_path / result["models"][0]["plots"]["overlays"]).exists()
    assert "| class |" in (tmp_path / "report.md").read_text()


def test_change(quick: dict[str, Any]) -> None:
    result = run_evaluation(
        "random:vit_test",
        "change",
        "synthetic:change:24:32",
        epochs=2,
        decoder="fcn",
        baselines=["random"],
        **quick,
    )
    m = _check(result, ["f1", "iou"])
    assert 0 <= m["iou"] <= m["f1"] <= 1


def test_detection(quick: dict[str, Any]) -> None:
    result = run_evaluation(
        "random:resnet_test", "detection", "synthetic:detection:16:64", epochs=2, **quick
    )
    m = _check(result, ["map50_hbox", "map50_obb"])
    assert 0 <= m["map50_obb"] <= 1


def test_scene_and_pixel_regression(quick: dict[str, Any]) -> None:
    scene = run_evaluation("random:vit_test", "regression", "synthetic:wavemode:80:32", **quick)
    m = _check(scene, ["rmse", "rmse_hs", "rmse_wind_speed"])
    assert m["rmse"] > 0
    pixel = run_evaluation(
        "random:vit_test", "regression", "synthetic:ndvi:16:32", epochs=2, decoder="fcn", **quick
    )
    _check(pixel, ["rmse", "mae"])


def test_superres(quick: dict[str, Any]) -> None:
    result = run_evaluation(
        "random:vit_test",
        "superres",
        "synthetic:landcover:30:32",
        epochs=1,
        decoder="fcn",
        bands=["B04", "B03", "B02"],
        **quick,
    )
    m = _check(result, ["psnr", "ssim"])
    bic = result["models"][0]["details"]["bicubic"]
    # the correction starts at zero: one epoch cannot be far from bicubic upsampling
    assert abs(m["psnr"] - bic["psnr"]) < 3


def test_unknown_task_lists_known_ones(quick: dict[str, Any]) -> None:
    with pytest.raises(UnknownNameError) as err:
        run_evaluation("random:vit_test", "probe", LANDCOVER, **quick)
    for name in TASKS:
        assert name in str(err.value)


def test_unlabelled_data_is_a_clear_error(quick: dict[str, Any], tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(MissingLabelError, match="needs classification labels"):
        run_evaluation("random:vit_test", "linear", str(tmp_path), **quick)
    with pytest.raises(MissingLabelError, match="segmentation"):
        run_evaluation(
            "random:vit_test", "segmentation", LANDCOVER.replace("landcover", "wavemode"), **quick
        )


def test_cli_names_match_the_registry() -> None:
    from eofm.cli.evaluate import DECODER_NAMES, TASK_NAMES
    from eofm.evaluation.dense import DECODERS

    assert tuple(TASKS) == TASK_NAMES
    assert DECODERS == DECODER_NAMES


def test_cli(quick: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "evaluate",
            "--model",
            "random:vit_test",
            "--task",
            "knn",
            "--data",
            LANDCOVER,
            "--out",
            str(out),
            "--quiet",
            "--cache-dir",
            str(quick["cache_dir"]),
            "--format",
            "md",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "top1" in text and "report.md" in text
    assert (out / "report.md").exists() and not (out / "report.html").exists()
    code = main(
        [
            "evaluate",
            "--model",
            "random:vit_test",
            "--task",
            "nope",
            "--data",
            LANDCOVER,
            "--quiet",
            "--cache-dir",
            str(quick["cache_dir"]),
        ]
    )
    assert code == 2
    assert "unknown evaluation task 'nope'" in capsys.readouterr().err
