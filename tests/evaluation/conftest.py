"""Fixtures for the evaluation tests: a shared cache folder and quiet, tiny option sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so synthetic sets are generated once."""
    return tmp_path_factory.mktemp("eval_cache")


@pytest.fixture
def quick(cache_dir: Path) -> dict[str, Any]:
    """Options for fast end-to-end runs."""
    return {"cache_dir": cache_dir, "progress": False, "seed": 0}
