"""The cluster a run was started in (torchrun or SLURM, as Lightning detects them), checked
against the recipe's ``trainer.num_nodes`` and ``trainer.devices`` before anything starts; and
the error a rank gets when another one never joins the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from eofm.errors import ConfigError, NodeJoinError

__all__ = ["ClusterEnv", "check_cluster", "cluster_env", "join_error"]


@dataclass(frozen=True)
class ClusterEnv:
    """Who launched this process, and how many processes and nodes the launcher started."""

    launcher: Literal["torchrun", "slurm"]
    world_size: int
    nodes: int
    rank: int
    node_rank: int

    @property
    def per_node(self) -> int:
        return self.world_size // max(1, self.nodes)


def _int(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={os.environ[name]!r} is not a number"
        ) from None


def cluster_env() -> ClusterEnv | None:
    """The torchrun (``TORCHELASTIC_RUN_ID``) or SLURM (``SLURM_NTASKS``, not an interactive
    ``bash`` job) launch this process belongs to, as Lightning detects them; else ``None``."""
    if "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ:
        world = _int("WORLD_SIZE", 1)
        per_node = max(1, _int("LOCAL_WORLD_SIZE", world))
        return ClusterEnv(
            "torchrun", world, max(1, world // per_node), _int("RANK"), _int("GROUP_RANK")
        )
    job = os.environ.get("SLURM_JOB_NAME", "")
    if "SLURM_NTASKS" in os.environ and job not in ("bash", "interactive"):
        return ClusterEnv(
            "slurm",
            _int("SLURM_NTASKS", 1),
            max(1, _int("SLURM_NNODES", 1)),
            _int("SLURM_PROCID"),
            _int("SLURM_NODEID"),
        )
    return None


def check_cluster(num_nodes: int, devices: int | str | list[int]) -> ClusterEnv | None:
    """Raise a :class:`~eofm.errors.ConfigError` naming the rank and the fix when the recipe's
    nodes x devices differ from what torchrun or SLURM started; returns the environment."""
    env = cluster_env()
    per_node = len(devices) if isinstance(devices, list) else devices
    if env is None:
        if num_nodes > 1:
            raise ConfigError(
                f"trainer.num_nodes={num_nodes} but this process was not started by torchrun or "
                "SLURM: start one process per node with torchrun --nnodes "
                f"{num_nodes} --node-rank R --rdzv-endpoint HOST:PORT, or srun (docs/scale.md)"
            )
        return None
    if env.launcher == "slurm" and env.world_size > 1 and "SLURM_NTASKS_PER_NODE" not in os.environ:
        raise ConfigError(
            f"rank {env.rank}: SLURM started {env.world_size} tasks without --ntasks-per-node; "
            "Lightning needs it: #SBATCH --nodes=N and --ntasks-per-node=GPUS (not --ntasks)"
        )
    if not isinstance(per_node, int):  # "auto", "-1": Lightning counts the devices
        return env
    if (num_nodes, per_node) != (env.nodes, env.per_node):
        start = (
            f"--nnodes {env.nodes} --nproc-per-node {env.per_node}"
            if env.launcher == "torchrun"
            else f"--nodes={env.nodes} --ntasks-per-node={env.per_node}"
        )
        raise ConfigError(
            f"rank {env.rank} (node {env.node_rank}): the recipe asks for "
            f"trainer.num_nodes={num_nodes} x trainer.devices={per_node} processes, but "
            f"{env.launcher} started {env.world_size} ({start}); set trainer.num_nodes="
            f"{env.nodes} trainer.devices={env.per_node}, or start the job with --nnodes/"
            "--nodes and processes per node that match the recipe"
        )
    return env


def join_error(err: BaseException, timeout_s: float | None) -> NodeJoinError:
    """The error for a process group that did not form (a rank never joined in time)."""
    env = cluster_env()
    rank = env.rank if env else _int("RANK")
    world = env.world_size if env else _int("WORLD_SIZE", 1)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    waited = f"{timeout_s:g} s" if timeout_s else "the default 30 min"
    return NodeJoinError(
        f"rank {rank} of {world}: the process group at {where} did not form within {waited} "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). A node "
        "never joined: start every node with the same --nnodes and rendezvous endpoint (or "
        "check the SLURM allocation), make sure the nodes reach that address and port; "
        "raise trainer.init_timeout_s for slow starts. No checkpoint was touched: restart "
        "all nodes with --resume auto to continue from the last one"
    )
