"""``eofm curate --distributed`` under torchrun: 2 CPU processes embed and cluster their shares
of the pool and keep exactly the subset one process keeps."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eofm.cli.main import main

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "curate",
    "--model", "bandstats",
    "--data", "synthetic:landcover:n=400:size=16",
    "--target", "0.3",
    "--k", "12,3",
    "--niter", "4",
    "--resamples", "2",
    "--batch-size", "32",
    "--distributed",
    "--quiet",
]  # fmt: skip


@pytest.mark.slow
def test_two_ranks_keep_the_subset_of_one(tmp_path: Path) -> None:
    assert main([*ARGS, "--out", str(tmp_path / "one")]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += [f"--rdzv-endpoint=127.0.0.1:{port}", "-m", "eofm.cli.main", *ARGS]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("kept 120 of 400") == 1  # rank 0 reports and writes
    a = np.load(tmp_path / "one" / "subset_indices.npy")
    b = np.load(tmp_path / "two" / "subset_indices.npy")
    assert a.shape == (120,) and np.array_equal(a, b)
    np.testing.assert_array_equal(
        np.load(tmp_path / "one" / "embeddings.npy"), np.load(tmp_path / "two" / "embeddings.npy")
    )
    assert (tmp_path / "two" / "embeddings.progress.1.json").is_file()  # rank 1 embedded its part
