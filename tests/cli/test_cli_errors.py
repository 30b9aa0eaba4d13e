"""The common mistakes get one clear line (exit status 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eofm.cli.main import main
from eofm.data.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[2]
NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("errors") / "scenes", n=12, size=32, seed=0, progress=False
    )


def error_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``eofm argv``; assert exit status 2 and one ``eofm: error:`` line; return it."""
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("eofm: error: ") and "\n" not in err, err
    return err


def pretrain(tmp_path: Path, *sets: str) -> list[str]:
    return [
        "pretrain",
        "--config",
        str(REPO / "configs" / "simclr_tiny.yaml"),
        "--set",
        "trainer.max_steps=1",
        *sets,
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    ]


def evaluate(data: Path | str, *extra: str) -> list[str]:
    return ["evaluate", "--model", "random:vit_test", "--task", "linear", "--data", str(data),
            "--quiet", *extra]  # fmt: skip


def curate(data: Path | str, out: Path, *extra: str) -> list[str]:
    return ["curate", "--model", "random:vit_test", "--data", str(data), "--target", "0.5",
            "--out", str(out), "--quiet", *extra]  # fmt: skip


def test_data_path_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "typo"
    for argv in (
        pretrain(tmp_path, f"data.path={missing}"),
        evaluate(missing),
        curate(missing, tmp_path / "cur"),
        ["demo", "--data", str(missing), "--out", str(tmp_path / "demo")],
    ):
        msg = error_of(capsys, *argv)
        assert str(missing) in msg and ("does not exist" in msg or "no such" in msg), msg
    assert not (tmp_path / "demo" / "report.md").exists()


def test_band_names_wrong(scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        pretrain(tmp_path, f"data.path={scenes}", "data.bands=[B04,B3X]"),
        evaluate(scenes, "--bands", "B04,B3X", "--cache-dir", str(tmp_path / "cache")),
        curate(scenes, tmp_path / "cur", "--bands", "B04,B3X"),
    ):
        msg = error_of(capsys, *argv)
        # names the file, the band that is missing, what was asked and what the file has
        assert ".tif" in msg and "missing bands ['B3X']" in msg, msg
        assert "expected ['B04', 'B3X']" in msg and "found ['B01'" in msg, msg


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_gpu_asked_for_on_a_machine_without_one(
    scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    msg = error_of(capsys, *pretrain(tmp_path, "trainer.accelerator=gpu"))
    assert "no GPU is available" in msg and "trainer.accelerator=cpu" in msg
    for argv in (
        evaluate(scenes, "--device", "cuda"),
        curate(scenes, tmp_path / "c", "--device", "cuda:0"),
    ):
        msg = error_of(capsys, *argv)
        assert "no GPU is available" in msg and "--device cpu" in msg, msg
    assert not (tmp_path / "c" / "embeddings.npy").exists()  # refused before any work
    msg = error_of(capsys, *evaluate(scenes, "--device", "tpu7"))
    assert "'tpu7'" in msg


def test_config_field_misspelt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = error_of(capsys, *pretrain(tmp_path, "optim.lrr=1e-3"))
    assert "optim.lrr" in msg and "did you mean 'lr'" in msg
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  backbone: vit_test\ntrainer:\n  max_step: 3\n")
    msg = error_of(capsys, "pretrain", "--config", str(recipe), "--quiet")
    assert str(recipe) in msg and "max_step" in msg and "did you mean 'max_steps'" in msg
    msg = error_of(
        capsys, "pretrain", "--config", str(REPO / "configs" / "simclr_tiny.yaml"),
        "--print-config", "method.name=simclrr",
    )  # fmt: skip
    assert "did you mean 'simclr'" in msg  # --print-config checks names too
    msg = error_of(capsys, *pretrain(tmp_path, "model.backbone=vit_tset"))
    assert "'vit_tset' is not a registered backbone; did you mean 'vit_test'?" in msg
    msg = error_of(capsys, "evaluate", "--model", "random:vit_test", "--task", "linaer",
                   "--data", "synthetic")  # fmt: skip
    assert "did you mean 'linear'" in msg


def test_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eofm.cli.main", *evaluate(tmp_path / "typo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"eofm: error: {tmp_path / 'typo'}: does not exist"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], "demo"),
        (["demo", "--help"], "--data FOLDER"),
        (["pretrain", "--help"], "--resume last"),
        (["evaluate", "--help"], "random:<backbone>"),
        (["curate", "--help"], "TARGET: a count"),
        (["data", "inspect", "--help"], "torchgeo:<ClassName>:<root>"),
    ],
)
def test_help(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert expected in capsys.readouterr().out
