"""Regional compilation (``model.compile``): options, the blocks compiled in place, and runs
on the CPU (inductor generating C++) that train as the eager ones do and resume."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from eofm.errors import ConfigError
from eofm.methods.base import Views, create_method
from eofm.methods.registry import import_all
from eofm.models import create_backbone, load_model
from eofm.training import run_pretraining
from eofm.training.compilation import CompileOptions, compile_blocks, compiled_blocks
from eofm.training.engine import validate_config
from tests.training.test_engine import tiny, weights


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_compile_options_from_the_config() -> None:
    assert CompileOptions.from_config({}).kwargs() == {"fullgraph": False, "backend": "inductor"}
    opts = CompileOptions.from_config({"mode": "max-autotune", "dynamic": False})
    assert opts.kwargs()["mode"] == "max-autotune" and opts.kwargs()["dynamic"] is False
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['modes'\]"):
        CompileOptions.from_config({"modes": "default"})
    with pytest.raises(ConfigError, match="mode='fast'"):
        CompileOptions.from_config({"mode": "fast"})
    with pytest.raises(ConfigError, match="mode or options, not both"):
        CompileOptions.from_config({"mode": "default", "options": {"trace.enabled": True}})
    with pytest.raises(ConfigError, match="backend='inductr' is not a torch.compile backend"):
        CompileOptions.from_config({"backend": "inductr"})


def test_compile_config_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    validate_config(tiny(tmp_path, "a", "model.compile=true", "trainer.accelerator=cpu"))
    with pytest.raises(ConfigError, match="compile_options"):  # checked even with compile off
        validate_config(tiny(tmp_path, "b", "model.compile_options={mode: fastest}"))
    import eofm.training.compilation as compilation

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        validate_config(tiny(tmp_path, "c", "model.compile=true", "trainer.accelerator=cpu"))
    # backends that generate no C++ still work
    debug = ["model.compile=true", "model.compile_options={backend: aot_eager}"]
    validate_config(tiny(tmp_path, "d", *debug, "trainer.accelerator=cpu"))


def test_compile_blocks_in_place_keeps_names_and_results() -> None:
    import_all()
    torch.manual_seed(0)
    backbone = create_backbone("vit_test", bands=3, img_size=32)  # 2 blocks
    method = create_method("dino", backbone, hidden_dim=32, bottleneck_dim=16, output_dim=32)
    eager = copy.deepcopy(method)
    names = list(method.state_dict())
    assert compile_blocks(method) == 2 + 2  # the student's and the teacher's blocks
    assert compiled_blocks(method) == 4 and compiled_blocks(eager) == 0
    assert list(method.state_dict()) == names  # checkpoints and exports are unchanged
    assert compiled_blocks(copy.deepcopy(method)) == 0  # a copy (the export) is plain
    assert compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0  # no known block
    torch.manual_seed(1)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16)] * 2
    before = _graphs()
    losses = []
    for m in (method, eager):
        torch.manual_seed(2)
        out = m.forward_loss(Views(views, num_global=2), {})
        out["loss"].backward()
        losses.append(float(out["loss"].detach()))
    assert _graphs() > before  # inductor did compile (student global, local, teacher)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for (name, p), q in zip(method.named_parameters(), eager.parameters(), strict=True):
        if q.grad is not None:
            assert p.grad is not None and torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-4), name


def test_pretraining_compiled_trains_as_eager_and_resumes(tmp_path: Path) -> None:
    sets = ["method.name=mae", "method.options={}", "trainer.max_steps=6"]
    before = _graphs()
    compiled = run_pretraining(tiny(tmp_path, "compiled", *sets, "model.compile=true"))
    assert _graphs() > before
    eager = run_pretraining(tiny(tmp_path, "eager", *sets))
    a = weights(compiled.run_dir / "checkpoints" / "last.ckpt")
    b = weights(eager.run_dir / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert load_model(compiled.run_dir / "model.safetensors") is not None
    # a compiled run resumes from its checkpoint (the names are the eager ones)
    again = run_pretraining(
        tiny(tmp_path, "compiled", *sets, "model.compile=true", "trainer.max_steps=8"),
        resume="last",
    )
    assert again.global_step == 8
