"""Dynamic pruning during pretraining: scheduled subset swaps, logs, exact resume, config."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from eofm.curation.dynamic import DynamicPruning, parse_pruning_config, pruning_from_config
from eofm.errors import ConfigError
from eofm.training import TrainingInterrupted, load_config, run_pretraining

TINY = [
    "data.path=synthetic:landcover:n=128:size=32",
    "data.batch_size=16",  # 8 batches per epoch on the pool, 4 on half of it
    "model.backbone=vit_test",
    "method.name=simclr",
    "method.options={hidden_dim: 32, output_dim: 16}",
    "trainer.max_steps=20",  # epochs 0..3: 8 + 4 + 4 + 4 steps
    "trainer.checkpoint_every_n_steps=100",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "trainer.num_threads=1",
    "output.tensorboard=false",
    "curation={enabled: true, warmup_epochs: 1, every_epochs: 1, fraction: 0.5, subsample: 100}",
]


def tiny(tmp: Path, name: str, *extra: str) -> Any:
    return load_config(None, [*TINY, f"output.dir={tmp}", f"output.name={name}", *extra])


class Seen(pl.Callback):
    """Dataset indices of every training batch, per epoch; and the pruning subsets."""

    def __init__(self) -> None:
        self.indices: dict[int, list[int]] = {}
        self.subsets: dict[int, list[int] | None] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        self.indices.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        pruning = next(c for c in trainer.callbacks if isinstance(c, DynamicPruning))
        self.subsets[trainer.current_epoch] = pruning.subset

    on_train_start = on_train_epoch_start  # a run resumed mid-epoch starts no epoch


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of an epoch


def metrics(run_dir: Path) -> list[dict[str, str]]:
    path = next((run_dir / "logs").rglob("metrics.csv"))
    return list(csv.DictReader(path.open()))


def test_subset_swapped_at_the_scheduled_epochs(tmp_path: Path) -> None:
    seen = Seen()
    result = run_pretraining(tiny(tmp_path, "run"), callbacks=[seen])
    assert result.global_step == 20
    # warm-up epoch on the whole pool, then three epochs on refreshed halves
    assert sorted(seen.indices[0]) == list(range(128))
    assert seen.subsets[0] is None
    for epoch in (1, 2, 3):
        subset = seen.subsets[epoch]
        assert subset is not None and len(subset) == 64
        assert sorted(seen.indices[epoch]) == sorted(subset)  # only subset indices are read
    assert seen.subsets[1] != seen.subsets[2]  # re-curated with the newer model
    rows = metrics(result.run_dir)
    sizes = [float(r["curation/subset_size"]) for r in rows if r.get("curation/subset_size")]
    assert sizes == [64.0, 64.0, 64.0, 64.0]
    entropies = [r["curation/cluster_entropy"] for r in rows if r.get("curation/cluster_entropy")]
    assert len(entropies) == 3 and all(float(e) > 0 for e in entropies)
    assert len([r for r in rows if r.get("curation/top_cluster_entropy")]) == 3
    ckpt = torch.load(result.last_checkpoint, weights_only=True)  # plain types only
    state = ckpt["callbacks"]["DynamicPruning"]
    assert state["refreshes"] == 3 and state["last_refresh_epoch"] == 2
    assert sorted(state["subset"].tolist()) == sorted(seen.subsets[3] or [])
    assert not list((result.run_dir / "curation").glob("*.npy"))  # embeddings cleaned up


def test_resume_after_the_first_refresh_keeps_the_subset(tmp_path: Path) -> None:
    straight = Seen()
    a = run_pretraining(tiny(tmp_path, "a"), callbacks=[straight])
    first = Seen()
    with pytest.raises(TrainingInterrupted):
        run_pretraining(tiny(tmp_path, "b"), callbacks=[first, StopAt(10)])  # mid epoch 1
    second = Seen()
    b = run_pretraining(tiny(tmp_path, "b"), resume="last", callbacks=[second])
    assert second.subsets[1] == first.subsets[1] == straight.subsets[1]
    assert sorted(first.indices[1] + second.indices[1]) == sorted(straight.indices[1])
    assert second.indices[2] == straight.indices[2] and second.indices[3] == straight.indices[3]
    wa = torch.load(a.last_checkpoint, weights_only=True)["state_dict"]
    wb = torch.load(b.last_checkpoint, weights_only=True)["state_dict"]
    for key, value in wa.items():
        torch.testing.assert_close(wb[key], value, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dino", "mae", "mocov3"])
def test_other_methods(tmp_path: Path, method: str) -> None:
    extra = [f"method.name={method}", "method.options={}", "trainer.max_steps=14"]
    if method == "dino":
        extra += [
            "method.options={hidden_dim: 32, bottleneck_dim: 16, output_dim: 64}",
            "method.views={local_views: 2, local_size: 16}",
        ]
    seen = Seen()
    run_pretraining(tiny(tmp_path, method, *extra), callbacks=[seen])
    assert sorted(seen.indices[1]) == sorted(seen.subsets[1] or [])


def test_config_section_forms_and_errors(tmp_path: Path) -> None:
    assert pruning_from_config({}) is None
    assert pruning_from_config({"dynamic_pruning": {"enabled": False}}) is None
    cfg = parse_pruning_config(
        {
            "dynamic_pruning": {
                "enabled": True,
                "warmup_epochs": None,  # null: the default
                "resample_every_epochs": 3,  # names of configs/dino_oceansar.yaml
                "keep_fraction": 0.25,
                "clusters_per_level": [50, 5],
                "embedding": "teacher_backbone",
            }
        }
    )
    assert (cfg.warmup_epochs, cfg.every_epochs, cfg.fraction) == (1, 3, 0.25)
    assert cfg.clusters == [50, 5] and cfg.levels == 2
    callback = pruning_from_config({"enabled": True, "every_epochs": 2}, seed=3)
    assert isinstance(callback, DynamicPruning) and callback.seed == 3
    assert [callback.due(e) for e in range(6)] == [True, False, True, False, True, False]
    with pytest.raises(ConfigError, match="did you mean 'fraction'"):
        parse_pruning_config({"enabled": True, "fractoin": 0.5})
    with pytest.raises(ConfigError, match="fraction"):
        parse_pruning_config({"enabled": True, "fraction": 1.5})
    with pytest.raises(ConfigError, match="every_epochs"):
        parse_pruning_config({"enabled": True, "every_epochs": 0})
    with pytest.raises(ConfigError, match="dynamic_pruning"):
        parse_pruning_config({"dynamic_pruning": {}, "enabled": True})
    # checked before anything runs, and streamed data is refused
    with pytest.raises(ConfigError, match="did you mean"):
        run_pretraining(tiny(tmp_path, "bad", "curation.diversty=0.5"))
    with pytest.raises(ConfigError, match="map-style"):
        run_pretraining(tiny(tmp_path, "stream", "data.iterable=true"))


def test_recipe_files_parse() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("dino_oceansar.yaml", "dino_tiny.yaml", "dino_oceansar_tiny_pruning.yaml"):
        config = load_config(root / name)
        parse_pruning_config(config.curation)


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes(tmp_path: Path) -> None:
    config = tiny(
        tmp_path,
        "ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        "trainer.max_steps=8",  # 4 steps per epoch on the pool (2 ranks x 16), then 2
        "method.options={hidden_dim: 32, output_dim: 16, batch_norm: false}",
    )
    result = run_pretraining(config)
    state = torch.load(result.last_checkpoint, weights_only=True)["callbacks"]["DynamicPruning"]
    assert state["refreshes"] == 2 and len(state["subset"]) == 64
    assert torch.load(result.last_checkpoint, weights_only=True)["global_step"] == 8


def test_callback_passed_by_hand_without_a_curation_section(tmp_path: Path) -> None:
    seen = Seen()
    pruning = DynamicPruning(warmup_epochs=2, every_epochs=1, fraction=0.25, diversity=1.0)
    config = tiny(tmp_path, "manual", "curation={}", "trainer.max_steps=19")  # 8 + 8 + 2 + 1
    run_pretraining(config, callbacks=[pruning, seen])
    assert seen.subsets[0] is None and seen.subsets[1] is None
    assert len(seen.subsets[2] or []) == 32 and sorted(seen.indices[2]) == sorted(seen.subsets[2])
    assert [h["epoch"] for h in pruning.history] == [1, 2]
