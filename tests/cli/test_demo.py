"""`eofm demo`: the main job end to end (seconds-long settings), on synthetic and user data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eofm.cli.main import main
from eofm.curation.dynamic import parse_pruning_config
from eofm.pipelines.demo import DemoSettings, demo_recipe, run_demo
from eofm.training.config import config_from_dict


def test_demo_on_the_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "linear probe" in printed and "segmentation" in printed and "report:" in printed
    for name in ("report.md", "report.html", "summary.json", "preview.png", "training.png",
                 "summary.png", "recipe.yaml", "pretrain/model.safetensors",
                 "curated/manifest.csv", "eval-linear/report.html",
                 "eval-segmentation/report.html"):  # fmt: skip
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    res = summary["results"]
    for task, metric in (("linear probe", "balanced_accuracy"), ("segmentation", "miou")):
        for role in ("pretrained", "random init"):
            assert 0.0 <= res[task][role][metric] <= 1.0
    # segmentation is repeated over seeds: the mean is the mean of the per-seed values
    seg = res["segmentation"]
    assert seg["seeds"] == [0, 1, 2]
    for role in ("pretrained", "random init"):
        per_seed = seg[role]["per_seed"]["miou"]
        assert len(per_seed) == 3
        assert seg[role]["miou"] == pytest.approx(sum(per_seed) / 3)
    pre, rnd = seg["pretrained"]["per_seed"]["miou"], seg["random init"]["per_seed"]["miou"]
    gains = [p - r for p, r in zip(pre, rnd, strict=True)]
    assert seg["gain"]["miou"][0] == pytest.approx(sum(gains) / 3)
    assert res["curation"]["kept"] == round(0.3 * 96)
    report = (out / "report.md").read_text()
    assert "| linear probe | balanced accuracy |" in report and "| segmentation | miou |" in report
    assert "mean ± standard deviation over seeds 0, 1, 2" in report
    # every image the report shows exists; every step names the command it ran
    for line in report.splitlines():
        if line.startswith("!["):
            assert (out / line.split("](")[1].rstrip(")")).is_file(), line
    assert "eofm pretrain --config" in report and "eofm curate --model" in report
    # the synthetic scenes are in dB: the recipe says so (SAR augmentations in dB)
    assert "sar_scale: db" in (out / "recipe.yaml").read_text()
    html = (out / "report.html").read_text()
    assert "<img src='summary.png'>" in html and "<table>" in html
    # the pretraining ran with dynamic pruning: the recipe says so and the log shows refreshes
    logs = list((out / "pretrain").glob("logs/version_*/metrics.csv"))
    assert logs and "curation/subset_size" in logs[0].read_text().splitlines()[0]


def test_demo_on_a_user_folder_without_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "mine"
    for c, cls in enumerate(("sea", "land", "cloud")):
        (data / cls).mkdir(parents=True)
        for i in range(16):
            img = rng.integers(0, 60, (40, 40, 3)) + 90 * c
            Image.fromarray(img.astype(np.uint8)).save(data / cls / f"{i}.png")
    report = run_demo(
        tmp_path / "out", data=data, settings=DemoSettings.quick(size=32), progress=False
    )
    text = report.read_text()
    assert f"your folder `{data}`" in text
    assert "| linear probe | balanced accuracy |" in text
    assert "segmentation skipped" in text and "has no masks" in text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "segmentation" not in summary["results"]
    # three easy classes by brightness: a probe on either encoder finds them
    assert summary["results"]["linear probe"]["pretrained"]["balanced_accuracy"] > 0.6


def test_demo_recipe_is_a_valid_pruning_recipe() -> None:
    config = config_from_dict(demo_recipe(DemoSettings(), "shards", None))
    assert config.method.name == "dense" and config.trainer.max_steps == 400
    pruning = parse_pruning_config(config.curation)
    assert pruning.enabled and pruning.fraction == 0.5 and pruning.every_epochs == 1


def test_old_import_path_and_no_cli_import() -> None:
    import subprocess
    import sys

    import eofm.demo
    import eofm.pipelines.demo

    assert eofm.demo.run_demo is eofm.pipelines.demo.run_demo
    assert eofm.demo.DemoSettings is DemoSettings
    # importing and setting up the demo pipeline loads nothing of the CLI
    code = (
        "import sys, eofm.pipelines.demo as d; d.demo_recipe(d.DemoSettings(), 'x', None); "
        "print(sorted(m for m in sys.modules if m.startswith('eofm.cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_recipe_gain_moves_db_scenes_by_at_most_its_db() -> None:
    """With the recipe's ``sar_scale: db`` a 1.5 dB calibration gain moves a dB scene by at most
    1.5 dB (taken as linear intensities, it moved water by up to 11 dB)."""
    import dataclasses

    import torch

    from eofm.augment.multiview import MultiViewAugment
    from eofm.methods.base import ViewSpec

    config = config_from_dict(demo_recipe(DemoSettings(), "shards", None, sar_scale="db"))
    cfg = dataclasses.replace(config.augment, speckle_p=0.0, blur_p=[0.0], sar_gain_p=1.0)
    db = torch.linspace(-25.0, -5.0, 4 * 2 * 8 * 8).reshape(4, 2, 8, 8)
    mean, std = db.mean((0, 2, 3)), db.std((0, 2, 3))
    z = (db - mean[None, :, None, None]) / std[None, :, None, None]
    aug = MultiViewAugment(["VV", "VH"], cfg, mean=mean, std=std)
    view = aug(z, ViewSpec(global_views=1, geometric=False), seed=0).images[0]
    change = (view * std[None, :, None, None] + mean[None, :, None, None] - db).abs()
    assert 0.0 < float(change.max()) <= 1.5 + 1e-3
    auto = config_from_dict(demo_recipe(DemoSettings(), "shards", None))
    assert auto.augment.sar_scale == "auto"
