"""FSDP2 (``trainer.strategy: fsdp``) on CPU: the sharding plan in one process, then 2-process
runs (gloo) of the real CLI. These check that FSDP trains exactly as DDP does, resumes
exactly, stops cleanly on SIGTERM, and drops the updates of non-finite steps."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from eofm.errors import ConfigError
from eofm.methods.base import Views, create_method
from eofm.methods.registry import import_all
from eofm.models import create_backbone, load_model
from eofm.training import load_config
from eofm.training.engine import validate_config
from eofm.training.sharding import ShardingOptions, is_sharded, shard_method
from tests.training.test_engine import weights

REPO = Path(__file__).resolve().parents[2]
#: A short run of a tiny recipe on 2 CPU processes.
SHORT = [
    "trainer.max_steps=6",
    "trainer.checkpoint_every_n_steps=4",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.num_threads=1",
    "data.batch_size=8",
]


# -- in one process ---------------------------------------------------------------------------
@pytest.fixture
def one_rank() -> Iterator[object]:
    """A world of one gloo process and its 1-D device mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_shard_method_units_gradients_ema_and_embeddings(one_rank: object) -> None:
    import_all()
    torch.manual_seed(0)
    backbone = create_backbone("vit_test", bands=3, img_size=32)  # 2 blocks
    method = create_method("dino", backbone, hidden_dim=32, bottleneck_dim=16, output_dim=32)
    whole = copy.deepcopy(method)
    units = shard_method(method, one_rank)
    assert units == 2 + 2 + 1  # the student's and the teacher's blocks, and the root
    assert is_sharded(method) and not is_sharded(whole)
    torch.manual_seed(1)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16)] * 2
    losses = []
    for m in (method, whole):
        out = m.forward_loss(Views(views, num_global=2), {})
        out["loss"].backward()
        losses.append(float(out["loss"].detach()))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (name, p), q in zip(method.named_parameters(), whole.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None, name
            continue
        grad = p.grad.full_tensor()  # type: ignore[union-attr]
        assert torch.allclose(grad, q.grad, atol=1e-6), name
    with torch.no_grad():  # an element-wise EMA update on the shards
        for p in method.parameters():
            p.add_(0.5)
        for p in whole.parameters():
            p.add_(0.5)
    method.on_step_end(1, 10)
    whole.on_step_end(1, 10)
    # registered forward methods gather the root unit's parameters (patch embedding, norm)
    assert torch.allclose(method.embed(views[0]), whole.embed(views[0]), atol=1e-5)
    assert torch.allclose(method.embed_student(views[0]), whole.embed_student(views[0]), atol=1e-5)


def test_sharding_options_from_the_config() -> None:
    opts = ShardingOptions.from_config({}, "bf16-mixed")
    assert (opts.param_dtype, opts.reduce_dtype) == ("bf16", "fp32")  # FSDP mixed precision
    assert ShardingOptions.from_config({}, "32-true").param_dtype is None
    off = ShardingOptions.from_config({"reshard_after_forward": False}, "32-true")
    assert off.fully_shard_kwargs()["reshard_after_forward"] is False
    with pytest.raises(ConfigError, match="sharding_strategy"):
        ShardingOptions.from_config({"sharding_strategy": "FULL_SHARD"}, "32-true")
    with pytest.raises(ConfigError, match="param_dtype='int8'"):
        ShardingOptions.from_config({"param_dtype": "int8"}, "32-true")


def test_old_torch_or_lightning_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from eofm.training.sharding import check_fsdp_support

    check_fsdp_support()  # the installed versions have FSDP2
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    with pytest.raises(ConfigError, match=r"needs torch >= 2.6 .*found torch 2.5.1"):
        check_fsdp_support()


def test_fsdp_config_checks(tmp_path: Path) -> None:
    base = [f"output.dir={tmp_path}", "trainer.strategy=fsdp", "trainer.accelerator=cpu"]
    base += ["trainer.max_steps=2"]
    validate_config(load_config(None, base))  # FSDP2 runs on CPU (gloo)
    with pytest.raises(ConfigError, match="16-mixed.*does not work with trainer.strategy=fsdp"):
        gpu = load_config(None, [*base, "trainer.accelerator=gpu", "trainer.precision=16-mixed"])
        validate_config(gpu, check_devices=False)
    with pytest.raises(ConfigError, match="strategy_options"):
        validate_config(load_config(None, [*base, "trainer.strategy_options={cpu_ofload: true}"]))


# -- 2 processes, through the CLI -------------------------------------------------------------
def _cli(recipe: str, out: Path, *sets: str, resume: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "eofm.cli.main", "pretrain", "--config"]
    cmd += [str(REPO / "configs" / f"{recipe}.yaml"), "--set", *SHORT, *sets]
    cmd += ["--out", str(out), "--quiet"]
    return cmd + (["--resume", resume] if resume else [])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def simclr_fsdp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-step FSDP run of ``simclr_tiny`` (checkpoints at steps 4 and 6), made once."""
    out = tmp_path_factory.mktemp("simclr") / "fsdp"
    stdout = _run(_cli("simclr_tiny", out, "trainer.strategy=fsdp"))
    assert stdout.count("steps:      6") == 1  # one summary, from rank 0
    return out


@pytest.mark.parametrize(
    ("recipe", "extra", "fsdp_extra", "tolerance"),
    [
        ("simclr_tiny", (), (), 1e-6),  # negatives gathered across ranks
        ("dino_tiny", (), (), 1e-6),  # EMA teacher, centring buffer, multi-crop
        # decoder blocks, recompute, and (FSDP only) compiled blocks: the GPU benchmark's setup
        ("mae_tiny", ("model.activation_checkpointing=true",), ("model.compile=true",), 1e-5),
    ],
)
def test_fsdp_trains_as_ddp_does(
    tmp_path: Path,
    recipe: str,
    extra: tuple[str, ...],
    fsdp_extra: tuple[str, ...],
    tolerance: float,
    request: pytest.FixtureRequest,
) -> None:
    runs = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        if recipe == "simclr_tiny" and strategy == "fsdp":
            runs[strategy] = request.getfixturevalue("simclr_fsdp")
            continue
        more = fsdp_extra if strategy == "fsdp" else ()
        stdout = _run(_cli(recipe, out, f"trainer.strategy={strategy}", *extra, *more))
        assert stdout.count("steps:      6") == 1  # one summary, from rank 0
        runs[strategy] = out
    fsdp, ddp = (weights(runs[s] / "checkpoints" / "last.ckpt") for s in ("fsdp", "ddp"))
    assert _max_diff(fsdp, ddp) < tolerance  # the same weights, sharded or replicated
    start = weights(runs["fsdp"] / "checkpoints" / "step=0000004.ckpt")
    assert _max_diff(fsdp, start) > 1e-4  # and the run did train
    model = load_model(runs["fsdp"] / "model.safetensors")  # exported whole from the shards
    assert not is_sharded(model)


def test_fsdp_resume_continues_exactly(tmp_path: Path, simclr_fsdp: Path) -> None:
    full, part = simclr_fsdp, tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    step4 = part / "checkpoints" / "step=0000004.ckpt"
    step4.write_bytes((full / "checkpoints" / "step=0000004.ckpt").read_bytes())
    _run(_cli("simclr_tiny", part, "trainer.strategy=fsdp", resume=str(step4)))
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    assert _max_diff(a["state_dict"], b["state_dict"]) == 0.0
    moments_a = [s["exp_avg"] for s in a["optimizer_states"][0]["state"].values()]
    moments_b = [s["exp_avg"] for s in b["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b, strict=True))


def test_fsdp_sigterm_saves_a_checkpoint_and_stops_every_rank(tmp_path: Path) -> None:
    out = tmp_path / "term"
    cmd = _cli(
        "simclr_tiny",
        out,
        "trainer.strategy=fsdp",
        "trainer.max_steps=100000",
        "trainer.checkpoint_every_n_steps=2",
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    deadline = time.time() + 180
    while time.time() < deadline and not list((out / "checkpoints").glob("step=*.ckpt")):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # to rank 0 only, as a scheduler may
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a deadlocked collective
        proc.kill()
        subprocess.run(["pkill", "-9", "-f", str(out)], check=False)
        pytest.fail("the ranks did not stop after SIGTERM")
    assert proc.returncode == 130, err[-3000:]
    saved = out / "checkpoints" / "interrupted.ckpt"
    assert saved.is_file() and err.count("resume from") == 1  # one message, from rank 0
    step = torch.load(saved, weights_only=True)["global_step"]
    assert step >= 2
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert not left.stdout.strip(), "a rank is still running"


DRIVER = """
import json, sys
from eofm.training import load_config, run_pretraining
from tests.reliability.test_nonfinite_loss import Poison, TINY
out = sys.argv[1]
cfg = load_config(None, [*TINY, f"output.dir={out}", "output.name=skip",
    "trainer.nonfinite_loss=skip", "trainer.max_nonfinite_skips=3", "optim.grad_clip=1.0",
    "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=fsdp",
    "trainer.checkpoint_every_n_steps=1", "trainer.keep_all_checkpoints=true"])
result = run_pretraining(cfg, callbacks=[Poison({5, 6})])
print("steps", result.global_step)
"""


def test_fsdp_skips_the_updates_of_non_finite_steps(tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"  # each rank runs it again (Lightning's launcher)
    driver.write_text(DRIVER)
    stdout = _run([sys.executable, str(driver), str(tmp_path)])
    assert "steps 10" in stdout
    ckpts = tmp_path / "skip" / "checkpoints"
    after = {n: weights(ckpts / f"step={n:07d}.ckpt") for n in (4, 5, 6, 7)}
    assert _max_diff(after[4], after[5]) > 0  # step 4 trained
    assert _max_diff(after[5], after[6]) == 0.0  # steps 5 and 6 were non-finite: no update
    assert _max_diff(after[6], after[7]) == 0.0
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["eofm_nonfinite"]["skipped_steps"] == 2
