"""CPU runs keep freed memory in glibc's allocator (fewer page faults per step)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eofm.training.config import load_config

#: Allocate and free tensors of varying sizes (1-24 MiB) the way training steps do; print the
#: minor page faults of the second pass.
SCRIPT = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from eofm.training.allocator import tune_malloc
    assert tune_malloc()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(30):
        xs = [torch.ones((1 + (i * 7 + j) % 24) << 20, dtype=torch.uint8) for j in range(6)]
        del xs
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(faults())
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_malloc_stops_refaulting_freed_memory() -> None:
    untuned, tuned = _faults("default"), _faults("tuned")
    assert untuned > 10_000  # glibc unmaps the freed blocks and faults them back in
    assert tuned < untuned / 10


def test_it_is_a_config_switch() -> None:
    assert load_config(None).trainer.tune_malloc is True
    assert load_config(None, ["trainer.tune_malloc=false"]).trainer.tune_malloc is False
