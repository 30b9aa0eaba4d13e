"""Recipes: YAML into checked dataclasses, overrides, helpful errors; every configs/*.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from eofm.errors import ConfigError
from eofm.training import (
    PretrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    validate_config,
)

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_recipes() -> None:
    names = {p.name for p in RECIPES}
    for expected in (
        "dino_oceansar.yaml",
        "dino_tiny.yaml",
        "simclr_baseline.yaml",
        "simclr_tiny.yaml",
        "mocov3_baseline.yaml",
        "mocov3_tiny.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_parses_and_names_real_things(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, PretrainConfig)
    assert config.output.name == path.stem
    validate_config(config, check_devices=False)  # method, options, views, backbone, trainer
    if path.stem.endswith("_tiny"):  # the CPU variants run on synthetic data, on CPU
        assert config.data.path.startswith("synthetic")
        assert config.trainer.accelerator in ("cpu", "auto")
        assert 0 < config.trainer.max_steps <= 500
    assert config_from_dict(config_to_dict(config)) == config  # plain values round trip


def test_defaults_and_round_trip() -> None:
    config = load_config()
    assert config.method.name == "simclr" and config.optim.name == "adamw"
    values = config_to_dict(config)
    assert isinstance(values["augment"]["crop_ratio"], list)  # plain YAML-able types
    assert config_from_dict(values) == config


def test_overrides_are_yaml_values(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\ntrainer:\n  max_steps: 5\n")
    config = load_config(
        recipe,
        [
            "optim.lr=3e-4",
            "data.bands=[B04, B03, B02]",
            "method.options={temperature: 0.2}",
            "trainer.max_time_s=null",
            "augment.crop_ratio=[0.5, 2]",
            "--trainer.devices=2",
        ],
    )
    assert config.optim.lr == pytest.approx(3e-4) and isinstance(config.optim.lr, float)
    assert config.data.bands == ["B04", "B03", "B02"]
    assert config.method.options == {"temperature": 0.2}
    assert config.trainer.max_time_s is None and config.trainer.devices == 2
    assert config.augment.crop_ratio == (0.5, 2.0)
    assert parse_override("a.b=on") == (["a", "b"], True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "did you mean 'lr'"),
        ("optimm.lr=0.1", "did you mean 'optim'"),
        ("trainer.max_step=3", "did you mean 'max_steps'"),
        ("optim.name=adamm", "did you mean 'adamw'"),
        ("trainer.max_steps=many", "integer"),
        ("data.batch_size", "key.sub=value"),
        ("augment.flip_p=[1]", "number"),
    ],
)
def test_bad_overrides_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_misspelt_field_in_a_file_names_file_and_field(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  backbon: vit_test\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*model.backbon.*did you mean 'backbone'"):
        load_config(recipe)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_validation_of_names() -> None:
    with pytest.raises(ConfigError, match="did you mean 'dino'"):
        validate_config(load_config(None, ["method.name=dinoo", "trainer.max_steps=1"]))
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        validate_config(
            load_config(None, ["method.options={temprature: 0.1}", "trainer.max_steps=1"])
        )
    with pytest.raises(ConfigError, match="did you mean 'local_views'"):
        validate_config(load_config(None, ["method.views={local_view: 2}", "trainer.max_steps=1"]))
    with pytest.raises(ConfigError, match="vit_test"):
        validate_config(load_config(None, ["model.backbone=vit_tset", "trainer.max_steps=1"]))
    with pytest.raises(ConfigError, match="bf16-mixed"):
        validate_config(load_config(None, ["trainer.precision=bf16_mixed", "trainer.max_steps=1"]))
    with pytest.raises(ConfigError, match="max_steps"):
        validate_config(load_config())
