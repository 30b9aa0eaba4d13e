"""Multi-node pretraining on this machine: two torchrun "nodes" on localhost (gloo, one
process each) train exactly as one torchrun node with two processes; each rank reads its own
part of the pool; a node SIGKILLed mid-run and a restart of both resume from the last
checkpoint. The launcher is checked against the recipe, and a node that never joins gives an
error naming the rank (SLURM's variables, as srun sets them, on one process)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from eofm.errors import ConfigError
from eofm.training.cluster import check_cluster, cluster_env

REPO = Path(__file__).resolve().parents[2]

#: ``eofm pretrain`` with two callbacks: one writes the pool indices of every batch of this
#: rank to ``$EOFM_SEEN.<rank>.json``; one SIGKILLs rank ``$EOFM_KILL_RANK`` after step
#: ``$EOFM_KILL_AT_STEP``.
DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys
    import lightning.pytorch as pl
    import eofm.training as training
    from eofm.cli.main import main

    class Seen(pl.Callback):
        def __init__(self):
            self.seen = {}

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen[trainer.global_step] = batch["index"].tolist()

        def on_train_end(self, trainer, module):
            with open(f"{os.environ['EOFM_SEEN']}.{trainer.global_rank}.json", "w") as f:
                json.dump(self.seen, f)

    class KillAt(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            at, rank = os.environ.get("EOFM_KILL_AT_STEP"), os.environ.get("EOFM_KILL_RANK")
            if at and trainer.global_step == int(at) and trainer.global_rank == int(rank):
                os.kill(os.getpid(), signal.SIGKILL)

    _run = training.run_pretraining

    def run(config, *, resume=None, callbacks=None):
        return _run(config, resume=resume, callbacks=[*(callbacks or []), Seen(), KillAt()])

    training.run_pretraining = run
    sys.exit(main(sys.argv[1:]))
    """
)

ARGS = [
    "pretrain",
    "--config",
    str(REPO / "configs" / "simclr_tiny.yaml"),
    "--set",
    "data.path=synthetic:landcover:n=64:size=32",
    "data.batch_size=8",  # per rank: a global batch of 16
    "model.img_size=32",
    "method.options={hidden_dim: 32, output_dim: 16, batch_norm: false}",
    "trainer.max_steps=6",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "trainer.strategy=ddp",
    "output.tensorboard=false",
    "--quiet",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(
    tmp: Path, out: Path, *, nodes: int, per_node: int, extra: tuple[str, ...] = (), **env: str
) -> list[int]:
    """``torchrun`` once per node (all on localhost, static rendezvous): the exit codes."""
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    port = _port()
    full = {**os.environ, "OMP_NUM_THREADS": "1", "EOFM_SEEN": str(out / "seen"), **env}
    full["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), full.get("PYTHONPATH", "")])
    procs = []
    for node in range(nodes):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}"]
        cmd += [f"--node-rank={node}", f"--nproc-per-node={per_node}"]
        cmd += [f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-conf=timeout=60", str(driver)]
        cmd += [*ARGS, f"trainer.num_nodes={nodes}", f"trainer.devices={per_node}"]
        cmd += [*extra, "--out", str(out)]
        log = open(tmp / f"{out.name}.node{node}.log", "a")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, env=full, cwd=tmp, stdout=log, stderr=log))
    return [p.wait(timeout=300) for p in procs]


def _losses(run: Path) -> list[tuple[int, float]]:
    rows: list[tuple[int, float]] = []
    for version in sorted((run / "logs").glob("version_*")):
        with open(version / "metrics.csv") as f:
            rows += [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f)]
    return sorted(dict(rows).items())


@pytest.mark.slow
def test_two_nodes_train_as_one_node_and_resume_after_a_node_is_killed(tmp_path: Path) -> None:
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    assert _torchrun(tmp_path, one, nodes=1, per_node=2) == [0]
    assert _torchrun(tmp_path, two, nodes=2, per_node=1) == [0, 0]
    # the same per-step losses and the same final weights, bit for bit
    assert _losses(two) == _losses(one) and len(_losses(one)) == 6
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # each rank read its own half of every global batch; an epoch covers the pool once
    seen = [json.loads((two / f"seen.{r}.json").read_text()) for r in range(2)]
    for step in range(4):  # 64 images / 16 a step: steps 0-3 are epoch 0
        assert not set(seen[0][str(step)]) & set(seen[1][str(step)])
    epoch = [i for r in range(2) for s in range(4) for i in seen[r][str(s)]]
    assert sorted(epoch) == list(range(64))

    # node 1 SIGKILLed after step 3 (checkpoint of step 2 saved): both nodes stop
    codes = _torchrun(
        tmp_path, killed, nodes=2, per_node=1, EOFM_KILL_AT_STEP="3", EOFM_KILL_RANK="1"
    )
    assert all(c != 0 for c in codes), codes
    import torch

    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    # restart both: they continue from step 2 and end where the uninterrupted run did
    assert _torchrun(tmp_path, killed, nodes=2, per_node=1, extra=("--resume", "auto")) == [0, 0]
    resumed = [json.loads((killed / f"seen.{r}.json").read_text()) for r in range(2)]
    assert sorted(map(int, resumed[0])) == [2, 3, 4, 5]
    assert all(resumed[r][s] == seen[r][s] for r in range(2) for s in resumed[r])
    c = load_file(killed / "model.safetensors")
    assert all((a[k] == c[k]).all() for k in a)


def _fake_slurm(monkeypatch: pytest.MonkeyPatch, tasks: int, nodes: int, rank: int) -> None:
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC"))]:
        monkeypatch.delenv(key)
    values = {
        "SLURM_NTASKS": tasks,
        "SLURM_NNODES": nodes,
        "SLURM_PROCID": rank,
        "SLURM_NODEID": rank // (tasks // nodes),
        "SLURM_LOCALID": rank % (tasks // nodes),
        "SLURM_JOB_NAME": "eofm",
        "SLURM_NTASKS_PER_NODE": tasks // nodes,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, str(value))


def test_launcher_and_recipe_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC"))]:
        monkeypatch.delenv(key)
    assert check_cluster(1, 1) is None
    with pytest.raises(ConfigError, match="not started by torchrun or SLURM"):
        check_cluster(2, 1)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    for key, value in {"WORLD_SIZE": 4, "LOCAL_WORLD_SIZE": 2, "RANK": 3, "GROUP_RANK": 1}.items():
        monkeypatch.setenv(key, str(value))
    env = cluster_env()
    assert env is not None and (env.nodes, env.per_node, env.rank) == (2, 2, 3)
    assert check_cluster(2, 2) == env
    with pytest.raises(ConfigError, match=r"rank 3 \(node 1\).*set trainer.num_nodes=2"):
        check_cluster(1, 2)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    _fake_slurm(monkeypatch, tasks=8, nodes=2, rank=5)
    assert check_cluster(2, 4) is not None
    with pytest.raises(ConfigError, match="ntasks-per-node=4"):
        check_cluster(4, 2)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    with pytest.raises(ConfigError, match="without --ntasks-per-node"):
        check_cluster(2, 4)


@pytest.mark.slow
def test_a_node_that_never_joins_names_the_rank(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    env.update(
        SLURM_NTASKS="2", SLURM_NNODES="2", SLURM_PROCID="0", SLURM_NODEID="0",
        SLURM_LOCALID="0", SLURM_JOB_NAME="eofm", SLURM_NTASKS_PER_NODE="1",
        SLURM_NODELIST="127.0.0.1", SLURM_JOB_ID="4242", MASTER_PORT=str(_port()),
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "eofm.cli.main", *ARGS, "trainer.num_nodes=2"]
    cmd += ["trainer.devices=1", "trainer.init_timeout_s=5", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "rank 0 of 2" in proc.stderr and "never joined" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert (
        not list((out / "checkpoints").glob("*.ckpt")) if (out / "checkpoints").exists() else True
    )
