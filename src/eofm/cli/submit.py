"""``eofm pretrain --submit slurm``: write and submit the SLURM job of a run with submitit.

The job runs the same ``eofm pretrain`` command (without ``--submit``) in every task of
``--slurm-nodes`` x ``--slurm-gpus-per-node`` tasks, with ``trainer.num_nodes``,
``trainer.devices`` and ``--resume auto`` added, so that a requeued job continues from its last
checkpoint. submitit writes the sbatch script and its logs to ``<run folder>/slurm/``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from eofm.errors import ConfigError

__all__ = ["add_submit_arguments", "submit_slurm"]


def add_submit_arguments(p: Any) -> None:
    """The ``--submit`` and ``--slurm-*`` options of ``eofm pretrain``."""
    p.add_argument(
        "--submit",
        choices=["slurm"],
        default=None,
        help="write and submit a SLURM job running this command (submitit; pip install "
        "eofm[scale]) instead of training here",
    )
    p.add_argument("--slurm-nodes", type=int, default=1, help="nodes of the job (1)")
    p.add_argument("--slurm-gpus-per-node", type=int, default=1, help="GPUs (= tasks) per node (1)")
    p.add_argument("--slurm-cpus-per-task", type=int, default=8, help="CPUs per task (8)")
    p.add_argument("--slurm-time", type=int, default=60 * 24, help="time limit, minutes (1440)")
    p.add_argument("--slurm-partition", default=None, help="SLURM partition")
    p.add_argument(
        "--slurm-option",
        dest="slurm_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another sbatch option, e.g. --slurm-option account=geo (repeatable)",
    )


def _job_argv(args: argparse.Namespace, nodes: int, per_node: int) -> list[str]:
    """The ``eofm pretrain`` arguments every task runs: the recipe, the overrides, the run
    folder, and the nodes, devices and ``--resume auto`` of the job."""
    out = ["--config", str(Path(args.config).resolve())] if args.config else []
    sets = [item for group in args.sets for item in group] + list(args.overrides)
    sets += [f"trainer.num_nodes={nodes}", f"trainer.devices={per_node}"]
    out += ["--set", *sets]
    if args.out:
        out += ["--out", str(Path(args.out).resolve())]
    return [*out, "--resume", "auto", "--quiet"]


def submit_slurm(args: argparse.Namespace, run_dir: Path) -> Any:
    """Submit the job of ``eofm pretrain`` arguments ``args``; returns the submitit job."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--submit slurm needs submitit: pip install 'eofm[scale]'") from None
    missing = [name for name in ("sbatch", "srun") if shutil.which(name) is None]
    if missing:
        raise ConfigError(
            f"--submit slurm: {' and '.join(missing)} not on PATH (this is not a SLURM login "
            "node); run it "
            "where sbatch is, or write the sbatch script of docs/scale.md and submit it there"
        )
    options: dict[str, str] = {}
    for text in args.slurm_options:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-option {text!r} must look like KEY=VALUE")
        options[key.replace("-", "_")] = value
    nodes, per_node = int(args.slurm_nodes), int(args.slurm_gpus_per_node)
    if nodes < 1 or per_node < 1:
        raise ConfigError("--slurm-nodes and --slurm-gpus-per-node must be at least 1")
    folder = run_dir / "slurm"
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=3)
    executor.update_parameters(
        nodes=nodes,
        ntasks_per_node=per_node,
        gpus_per_node=per_node,
        cpus_per_task=int(args.slurm_cpus_per_task),
        time=int(args.slurm_time),
        job_name=f"eofm-{run_dir.name or 'pretrain'}",
        **({"partition": args.slurm_partition} if args.slurm_partition else {}),
        **({"additional_parameters": options} if options else {}),
    )
    command = [sys.executable, "-m", "eofm.cli.main", "pretrain"]
    command += _job_argv(args, nodes, per_node)
    return executor.submit(submitit.helpers.CommandFunction(command, verbose=True))
