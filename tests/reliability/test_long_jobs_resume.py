"""Long jobs killed with SIGKILL and restarted redo none of their finished work: ``eofm
curate`` (embeddings by chunk, then the cached k-means) and ``eofm evaluate`` (feature
extraction: finished splits cached, an unfinished one resumed from its saved rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import eofm.curation.pipeline as pipeline
import eofm.evaluation.features as features
from eofm.cli.main import main
from eofm.curation.embed import BandStatistics, embedding_progress
from eofm.curation.pipeline import CurationConfig, curate_embeddings
from tests.reliability.conftest import Record

REPO = Path(__file__).resolve().parents[2]

#: Runs an ``eofm`` command that SIGKILLs itself at the start of the K-th batch of its model.
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    mode, kill_at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    calls = [0]

    def killer(fn):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped

    if mode == "curate":
        from eofm.curation.embed import BandStatistics
        BandStatistics.forward = killer(BandStatistics.forward)
    else:
        import eofm.evaluation.features as F
        F.embed = killer(F.embed)
        F.extract_features.__kwdefaults__["checkpoint_every"] = 1  # save after every batch
    from eofm.cli.main import main
    sys.exit(main(argv))
    """
)


def killed(tmp_path: Path, mode: str, kill_at: int, argv: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, mode, str(kill_at), *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Count the calls (and images, for batch arguments) of ``owner.name``."""
    real: Callable[..., Any] = getattr(owner, name)
    seen: list[int] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        batch = next((a for a in args if hasattr(a, "shape") and len(a.shape) == 4), None)
        seen.append(int(batch.shape[0]) if batch is not None else 1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return seen


def test_curate_killed_while_embedding_resumes_and_reuses_kmeans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    data = "synthetic:landcover:n=300:size=16"
    args = ["curate", "--model", "bandstats", "--data", data, "--target", "0.5"]
    args += ["--batch-size", "20", "--k", "8,3", "--quiet"]  # chunks of 160 samples
    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0

    out = tmp_path / "killed"
    assert killed(tmp_path, "curate", 11, [*args, "--out", str(out)]) == -9  # in chunk 2
    info = embedding_progress(out / "embeddings.npy")
    assert info["done"] == [0] and not info["complete"]

    images = counting(monkeypatch, BandStatistics, "forward")
    kmeans = counting(monkeypatch, pipeline, "hierarchical_kmeans")
    assert main([*args, "--out", str(out)]) == 0
    assert sum(images) == 300 - 160  # only the unfinished chunk was embedded again
    assert len(kmeans) == 1
    np.testing.assert_array_equal(
        np.load(out / "subset_indices.npy"), np.load(ref / "subset_indices.npy")
    )
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), np.load(ref / "embeddings.npy"))

    assert main([*args, "--out", str(out)]) == 0  # once more: nothing is recomputed
    assert sum(images) == 300 - 160 and len(kmeans) == 1
    assert main([*args[:6], "0.3", *args[7:], "--out", str(out)]) == 0  # another target
    assert len(kmeans) == 1  # the same clusters, sampled again
    assert len(np.load(out / "subset_indices.npy")) == 90
    record(
        "resume",
        "`eofm curate` (300 samples, chunks of 160) SIGKILLed in its second embedding chunk",
        "restart embedded only the 140 samples of the unfinished chunk and produced the "
        "subset of an uninterrupted run; a further run (and one with another --target) "
        "re-embedded nothing and reused the cached k-means",
    )


def test_curation_cache_is_keyed_and_survives_corruption(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "emb.npy"
    np.save(path, rng.normal(size=(400, 8)).astype(np.float32))
    x = np.load(path, mmap_mode="r")
    cfg = CurationConfig(target=100, clusters=[10, 3], niter=5, n_resamples=2, seed=1)
    first = curate_embeddings(x, cfg)
    again = curate_embeddings(x, cfg)
    assert first.cached == [] and again.cached == ["kmeans"]
    np.testing.assert_array_equal(first.indices, again.indices)
    assert curate_embeddings(x, CurationConfig(**{**cfg.to_dict(), "niter": 6})).cached == []
    other = tmp_path / "other.npy"  # other values: a cache of its own
    np.save(other, rng.normal(size=(400, 8)).astype(np.float32))
    assert curate_embeddings(np.load(other, mmap_mode="r"), cfg).cached == []
    for f in (tmp_path / "emb.curation-cache").glob("kmeans-*.npz"):
        f.write_bytes(b"corrupt")
    redo = curate_embeddings(x, cfg)
    assert redo.cached == []
    np.testing.assert_array_equal(redo.indices, first.indices)
    assert curate_embeddings(np.asarray(x), cfg).cached == []  # in memory: no cache


def _saved_rows(cache: Path) -> int:
    """Rows of features on disk: finished splits plus the progress of an unfinished one."""
    folder = cache / "features"
    finished = sum(
        len(np.load(p, mmap_mode="r"))
        for p in folder.glob("*.npy")
        if not p.name.endswith((".labels.npy", ".partial.npy"))
    )
    partial = sum(json.loads(p.read_text())["done"] for p in folder.glob("*.partial.json"))
    return finished + partial


def test_evaluate_killed_while_extracting_features_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: Record
) -> None:
    args = ["evaluate", "--model", "random:vit_test", "--task", "knn"]
    args += ["--data", "synthetic:landcover:120:16", "--batch-size", "16", "--quiet"]
    ref_images = counting(monkeypatch, features, "embed")
    assert main([*args, "--out", str(tmp_path / "ref"), "--cache-dir", str(tmp_path / "c0")]) == 0
    total = sum(ref_images)
    monkeypatch.undo()
    ref_report = json.loads((tmp_path / "ref" / "results.json").read_text())

    cache = tmp_path / "cache"
    run = [*args, "--out", str(tmp_path / "out"), "--cache-dir", str(cache)]
    assert killed(tmp_path, "evaluate", 6, run) == -9
    saved = _saved_rows(cache)
    assert 0 < saved < total

    images = counting(monkeypatch, features, "embed")
    assert main(run) == 0
    assert sum(images) == total - saved  # no finished row was computed again
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["models"][0]["metrics"] == ref_report["models"][0]["metrics"]
    assert main(run) == 0
    assert sum(images) == total - saved  # everything cached now
    record(
        "resume",
        f"`eofm evaluate --task knn` SIGKILLed during feature extraction ({saved} of {total} "
        "feature rows saved)",
        f"restart computed only the {total - saved} missing rows and gave the metrics of an "
        "uninterrupted run; a third run computed none",
    )
