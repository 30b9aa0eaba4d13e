"""Shared fixtures. Real-data tests use ``../shared/data`` (or ``$EOFM_SHARED_DATA``) and skip
cleanly when it is absent, as on a user's fresh clone."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("EOFM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real EO data; skips the test when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real EO data not found at {root} (set EOFM_SHARED_DATA)")
    return root


def shared_subdir(root: Path, name: str) -> Path:
    path = root / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Every test runs on one intra-op thread: with tiny models on a shared 2-core machine,
    OpenMP threads spinning on each other make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The decode-once cache (``eofm.data.cache``) of the test session lives in a temporary
    folder, never in the user's ``~/.cache/eofm``."""
    old = os.environ.get("EOFM_CACHE_DIR")
    os.environ["EOFM_CACHE_DIR"] = str(tmp_path_factory.mktemp("eofm-cache"))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("EOFM_CACHE_DIR", None)
        else:
            os.environ["EOFM_CACHE_DIR"] = old
