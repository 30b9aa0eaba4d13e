"""DDP correctness of the contrastive methods: 2 CPU processes (gloo), each holding half of the
batch, give the loss and gradients of one process holding all of it (negatives gathered
across ranks with gradients; gradients averaged as DDP does)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eofm.methods.base import SSLMethod, Views
from eofm.models import create_backbone

WORLD = 2
BATCH = 8  # combined batch; 4 per rank


def _build(name: str) -> SSLMethod:
    from eofm.methods.dino import DINO
    from eofm.methods.mocov3 import MoCoV3
    from eofm.methods.simclr import SimCLR

    torch.manual_seed(0)
    bb = create_backbone("vit_test", bands=3, img_size=32)
    if name == "simclr":  # no BatchNorm: per-rank BN statistics would differ (use SyncBN)
        return SimCLR(bb, hidden_dim=32, output_dim=16, batch_norm=False, temperature=0.5)
    if name == "mocov3":
        return MoCoV3(bb, hidden_dim=32, output_dim=16, batch_norm=False)
    return DINO(bb, hidden_dim=32, bottleneck_dim=8, output_dim=64)


def _views(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    glob = [torch.randn(BATCH, 3, 32, 32, generator=g) for _ in range(2)]
    loc = [torch.randn(BATCH, 3, 16, 16, generator=g) for _ in range(2)]
    return glob + loc


def _step(
    method: SSLMethod, images: list[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    n = 2 if method.name != "dino" else 4
    out = method.forward_loss(Views(images[:n], num_global=2), {})
    out["loss"].backward()
    grads = {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}
    return out["loss"].detach(), grads


def _worker(rank: int, port: int, state: str, result: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        out: dict[str, object] = {}
        half = BATCH // WORLD
        for name in ("simclr", "mocov3", "dino"):
            method = _build(name)
            method.load_state_dict(torch.load(state, weights_only=True)[name])
            images = [v[rank * half : (rank + 1) * half] for v in _views()]
            loss, grads = _step(method, images)
            dist.all_reduce(loss)  # DDP: the mean of the per-rank losses and gradients
            for g in grads.values():
                dist.all_reduce(g)
            out[name] = {
                "loss": loss / WORLD,
                "grads": {k: g / WORLD for k, g in grads.items()},
                "state": {k: v.clone() for k, v in method.state_dict().items()},
            }
        if rank == 0:
            torch.save(out, result)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_equal_one_with_the_combined_batch(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    state_path, result_path = tmp_path / "state.pt", tmp_path / "result.pt"
    reference: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
    states = {}
    for name in ("simclr", "mocov3", "dino"):
        method = _build(name)
        states[name] = {k: v.clone() for k, v in method.state_dict().items()}
        loss, grads = _step(method, _views())
        reference[name] = (loss, grads, method.state_dict())
    torch.save(states, state_path)
    mp.spawn(_worker, args=(_free_port(), str(state_path), str(result_path)), nprocs=WORLD)
    got = torch.load(result_path, weights_only=True)
    for name, (loss, grads, _state) in reference.items():
        torch.testing.assert_close(got[name]["loss"], loss, atol=1e-5, rtol=1e-5)
        assert set(got[name]["grads"]) == set(grads), name
        for key, g in grads.items():
            torch.testing.assert_close(
                got[name]["grads"][key], g, atol=1e-5, rtol=1e-4, msg=f"{name} {key}"
            )
    # DINO's centre is averaged across ranks: the same as with the combined batch
    torch.testing.assert_close(
        got["dino"]["state"]["criterion.center"], reference["dino"][2]["criterion.center"]
    )
