"""synth -> inspect -> stats -> pack through the command line, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eofm.cli.main import main
from eofm.data.catalog import open_dataset
from eofm.data.shards import ShardDataset


def test_synth_inspect_stats_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenes = tmp_path / "scenes"
    assert main(["data", "synth", str(scenes), "--n", "40", "--size", "32", "--quiet"]) == 0
    assert (scenes / "labels.csv").exists() and (scenes / "classes.json").exists()
    capsys.readouterr()

    preview = tmp_path / "prev.png"
    code = main(
        [
            "data",
            "inspect",
            str(scenes),
            "--task",
            "segmentation",
            "--preview",
            str(preview),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "samples:   40" in out and "B8A" in out and "(pixels)" in out
    assert preview.stat().st_size > 5_000

    assert main(["data", "stats", str(scenes), "--quiet"]) == 0
    card = json.loads((scenes / "eofm_card.json").read_text())
    assert len(card["bands"]) == 13
    capsys.readouterr()

    shards = tmp_path / "shards"
    assert main(["data", "pack", str(scenes), str(shards), "--shard-size", "16", "--quiet"]) == 0
    packed = ShardDataset(shards)
    source = open_dataset(scenes)
    assert len(packed) == 40
    for i in (0, 17, 39):
        np.testing.assert_array_equal(packed[i]["image"].numpy(), source[i]["image"].numpy())
        assert int(packed[i]["label"]) == int(source[i]["label"])


def test_synth_wavemode_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wv"
    assert (
        main(
            [
                "data",
                "synth",
                str(out),
                "--kind",
                "wavemode",
                "--n",
                "20",
                "--size",
                "64",
                "--quiet",
            ]
        )
        == 0
    )
    ds = open_dataset(out)
    assert len(ds) == 20 and ds[0]["bands"] == ("VV",)
    capsys.readouterr()
    assert main(["data", "synth", str(tmp_path / "x"), "--n", "0", "--quiet"]) == 2
    assert "eofm: error:" in capsys.readouterr().err
