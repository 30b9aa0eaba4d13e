"""Label fractions are stratified (every class, the right counts); splits are seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eofm.errors import ConfigError
from eofm.evaluation.data import fraction_indices, split_indices


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_fraction_indices_are_stratified(fraction: float) -> None:
    rng = np.random.default_rng(0)
    counts = [500, 200, 57, 9, 1]
    labels = rng.permutation(np.concatenate([np.full(n, c) for c, n in enumerate(counts)]))
    idx = fraction_indices(labels, fraction, seed=3)
    assert len(np.unique(idx)) == len(idx)
    picked = np.bincount(labels[idx], minlength=len(counts))
    expected = [min(n, max(1, round(fraction * n))) for n in counts]
    assert picked.tolist() == expected
    assert np.array_equal(idx, fraction_indices(labels, fraction, seed=3))
    if fraction < 1:
        assert not np.array_equal(idx, fraction_indices(labels, fraction, seed=4))


def test_fraction_indices_multilabel_covers_every_class() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((1000, 8)) < 0.2).astype(np.float32)
    y[:, 7] = 0
    y[123, 7] = 1  # a class with one positive only
    idx = fraction_indices(y, 0.01, seed=0)
    assert len(idx) == 10
    assert (y[idx].sum(0) > 0).all()


def test_fraction_out_of_range() -> None:
    with pytest.raises(ConfigError):
        fraction_indices(np.zeros(10, dtype=int), 0.0, seed=0)


def test_stratified_sample_has_exact_size() -> None:
    from eofm.evaluation.data import stratified_sample

    labels = np.repeat(np.arange(5), [500, 200, 57, 9, 1])
    for size in (5, 17, 100, 767):
        idx = stratified_sample(labels, size, seed=0)
        assert len(idx) == size and len(np.unique(idx)) == size
        assert len(np.unique(labels[idx])) == 5
    idx = stratified_sample(labels, 100, seed=0)
    assert abs(int((labels[idx] == 0).sum()) - 65) <= 1


def test_split_indices_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(4), [100, 60, 40, 20])
    tr, va, te = split_indices(len(labels), labels, seed=0)
    assert va is not None
    allidx = np.concatenate([tr, va, te])
    assert sorted(allidx.tolist()) == list(range(len(labels)))
    for c, n in enumerate([100, 60, 40, 20]):
        assert (labels[te] == c).sum() == round(0.15 * n)
        assert (labels[va] == c).sum() == round(0.15 * n)


def test_split_indices_tiny_set() -> None:
    tr, va, te = split_indices(6, None, seed=0)
    assert va is None and len(te) == 2 and len(tr) == 4


def test_named_set_is_found_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data: Path
) -> None:
    from eofm.evaluation import data as evaldata

    monkeypatch.delenv("EOFM_SHARED_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # ../shared/data of this folder does not exist
    root = evaldata.named_set_root("eurosat-rgb")
    assert root.resolve() == (shared_data / "eurosat_rgb").resolve()
    monkeypatch.setenv("EOFM_SHARED_DATA", str(tmp_path / "elsewhere"))  # tried first, absent
    assert evaldata.named_set_root("eurosat-rgb").resolve() == root.resolve()


def test_named_set_error_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eofm.errors import DataError
    from eofm.evaluation import data as evaldata

    monkeypatch.setitem(evaldata.SHARED_SETS, "nowhere-set", "no_such_folder")
    monkeypatch.setenv("EOFM_SHARED_DATA", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        evaldata.resolve_data("nowhere-set", "classification")
    text = str(err.value)
    assert str(tmp_path / "env" / "no_such_folder") in text  # $EOFM_SHARED_DATA
    assert str(Path(evaldata.__file__).resolve().parents[4] / "shared" / "data") in text  # project
    assert str(tmp_path.parent / "shared" / "data" / "no_such_folder") in text  # cwd
    assert "EOFM_SHARED_DATA" in text
