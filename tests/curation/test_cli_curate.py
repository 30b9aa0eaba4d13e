"""``eofm curate`` end to end: manifest, report, entropy, resuming, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from eofm.cli.main import main
from eofm.data.shards import ShardDataset
from eofm.errors import ConfigError


def test_curate_heavy_tailed_pool_raises_class_entropy(
    tmp_path: Path, colour_pool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "curated"
    argv = [
        "curate",
        "--model",
        "bandstats",
        "--data",
        str(colour_pool),
        "--target",
        "0.3",
        "--levels",
        "2",
        "--diversity",
        "0.5",
        "--out",
        str(out),
        "--quiet",
        "--json",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in (
        "manifest.csv",
        "manifest.json",
        "report.md",
        "cluster_sizes.png",
        "classes.png",
        "clusters_grid.png",
        "clusters.npz",
        "subset_indices.npy",
        "embeddings.npy",
    ):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 150
    assert set(rows[0]) == {"index", "path", "cluster_l1", "cluster_l2", "distance", "label"}
    labels = ShardDataset(colour_pool).get_batch(np.arange(500))["label"].numpy()
    for row in rows[:20]:  # paths and labels are those of the indexed samples
        i = int(row["index"])
        assert row["path"] == f"img_{i:05d}.png" and row["label"] == f"class{labels[i]}"
    summary = json.loads((out / "manifest.json").read_text())
    classes = summary["stats"]["classes"]
    assert classes["entropy_after"] > classes["entropy_before"] + 0.5
    # the dominant class falls from 80% of the pool to well under 60% of the subset, and the
    # small classes (25 images each) keep far more than the 30% a uniform sample would keep
    assert classes["counts_after"][0] < 0.6 * 150
    assert min(classes["counts_after"][1:]) >= 10
    assert summary["subset_size"] == 150 and summary["pool_size"] == 500
    report = (out / "report.md").read_text()
    assert "Class entropy" in report and "![clusters](clusters_grid.png)" in report
    assert "class entropy" in printed
    kept = np.load(out / "subset_indices.npy")
    assert sorted(int(r["index"]) for r in rows) == kept.tolist()
    # running again resumes from the finished embeddings and gives the same subset
    assert main([*argv[:-1]]) == 0
    np.testing.assert_array_equal(np.load(out / "subset_indices.npy"), kept)


def test_curate_synthetic_spec_with_a_random_vit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "syn"
    code = main(
        [
            "curate",
            "--model",
            "random:vit_test",
            "--data",
            "synthetic:landcover:n=200:size=32:heavy_tail=0.8",
            "--target",
            "60",
            "--k",
            "12,3",
            "--out",
            str(out),
            "--quiet",
            "--grid-clusters",
            "3",
            "--dedup",
            "0.9999",
        ]
    )
    assert code == 0
    summary = json.loads((out / "manifest.json").read_text())
    assert summary["subset_size"] == 60 and summary["clusters"] == [12, 3]
    assert summary["stats"]["near_duplicates_removed"] >= 0
    assert (out / "synthetic" / "index.json").is_file()
    assert "cropland" in (out / "report.md").read_text()


def test_curate_errors(
    tmp_path: Path, colour_pool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["curate", "--model", "bandstats", "--data", str(colour_pool), "--out", str(tmp_path)]
    assert main([*base, "--target", "many"]) == 2
    assert "--target" in capsys.readouterr().err
    assert main([*base, "--target", "0.3", "--k", "10,3", "--levels", "3"]) == 2
    assert main([*base, "--target", "0.3", "--diversity", "2"]) == 2
    assert main([*base, "--target", "0.3", "--k", "1000"]) == 2
    assert "clusters" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        from eofm.cli.curate import _target

        _target("1.5")
