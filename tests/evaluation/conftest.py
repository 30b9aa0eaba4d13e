"""Fixtures for the evaluation tests: a shared cache folder and quiet, tiny option sets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Seeded, and single-threaded: with other jobs on the 2 cores, two OpenMP threads make
    the tiny models of these tests 10-30x slower (threads spin waiting for each other)."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so synthetic sets are generated once."""
    return tmp_path_factory.mktemp("eval_cache")


@pytest.fixture
def quick(cache_dir: Path) -> dict[str, Any]:
    """Options for fast end-to-end runs."""
    return {"cache_dir": cache_dir, "progress": False, "seed": 0}
