"""kNN and linear probes: ~100 % on features that encode the label, about chance on noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eofm.evaluation.knn import knn_scores, nearest_neighbours
from eofm.evaluation.linear import train_linear_probe

K = 10


def encoded(n: int, seed: int, dim: int = 32, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first K dims carry a one-hot label code, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    x = rng.normal(0, noise, (n, dim)).astype(np.float32)
    x[np.arange(n), y] += 3.0
    return x, y


def noise(n: int, seed: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), rng.integers(0, K, n)


def test_linear_probe_learns_encoded_labels() -> None:
    xtr, ytr = encoded(1000, 0)
    xte, yte = encoded(1000, 1)
    probe = train_linear_probe(xtr, ytr, num_classes=K, epochs=30)
    acc = float((probe.predict(xte).numpy() == yte).mean())
    assert acc >= 0.99
    assert len(probe.sweep) == 12  # 3 lrs x 4 weight decays, on a carved validation split
    assert probe.lr in (1e-3, 1e-2, 1e-1)


def test_linear_probe_on_noise_is_near_chance() -> None:
    xtr, ytr = noise(1000, 0)
    xte, yte = noise(2000, 1)
    probe = train_linear_probe(xtr, ytr, num_classes=K, epochs=30)
    acc = float((probe.predict(xte).numpy() == yte).mean())
    assert abs(acc - 1 / K) < 0.04


def test_lbfgs_probe_and_explicit_validation() -> None:
    xtr, ytr = encoded(600, 2)
    xva, yva = encoded(200, 3)
    xte, yte = encoded(500, 4)
    probe = train_linear_probe(
        xtr, ytr, val_x=xva, val_y=yva, num_classes=K, optimizer="lbfgs", wds=(1e-4, 1e-2)
    )
    assert float((probe.predict(xte).numpy() == yte).mean()) >= 0.99
    assert [s["weight_decay"] for s in probe.sweep] == [1e-4, 1e-2]


def test_multilabel_probe_reaches_full_map() -> None:
    from eofm.evaluation.metrics import multilabel_metrics

    rng = np.random.default_rng(5)
    y = (rng.random((800, 6)) < 0.3).astype(np.float32)
    x = np.concatenate([y * 3 + rng.normal(0, 0.5, y.shape), rng.normal(size=(800, 10))], 1)
    probe = train_linear_probe(x[:600], y[:600], epochs=30)
    assert probe.multilabel
    m = multilabel_metrics(probe.scores(x[600:]), y[600:])
    assert m["map_micro"] >= 0.99 and m["map_macro"] >= 0.99


def test_knn_on_encoded_and_noise() -> None:
    xtr, ytr = encoded(1000, 0)
    xte, yte = encoded(1000, 1)
    acc = float((knn_scores(xtr, ytr, xte, k=20).argmax(1).numpy() == yte).mean())
    assert acc >= 0.99
    ntr, nytr = noise(1000, 0)
    nte, nyte = noise(2000, 1)
    acc_noise = float(
        (knn_scores(ntr, nytr, nte, k=20, num_classes=K).argmax(1).numpy() == nyte).mean()
    )
    assert abs(acc_noise - 1 / K) < 0.04


def test_knn_votes_are_temperature_weighted() -> None:
    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    query = np.array([[1.0, 0.1]], dtype=np.float32)
    s = knn_scores(train, labels, query, k=2, temperature=0.5, num_classes=2)
    q = query[0] / np.linalg.norm(query[0])
    sims = train @ q  # train rows are unit norm
    assert s[0, 0].item() == pytest.approx(np.exp(sims[0] / 0.5), rel=1e-5)
    assert s[0, 1].item() == pytest.approx(
        np.exp(sims[1] / 0.5), rel=1e-5
    )  # third is not among k=2


def test_knn_faiss_matches_torch() -> None:
    pytest.importorskip("faiss")
    xtr, _ = encoded(300, 0)
    xte, _ = encoded(50, 1)
    s1, i1 = nearest_neighbours(xtr, xte, 5)
    s2, i2 = nearest_neighbours(xtr, xte, 5, backend="faiss")
    assert torch.equal(i1, i2)
    assert torch.allclose(s1, s2, atol=1e-5)


def test_knn_multilabel_scores_are_weighted_means() -> None:
    train = np.eye(3, dtype=np.float32)
    labels = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    s = knn_scores(train, labels, np.array([[1.0, 0.0, 0.0]], dtype=np.float32), k=3)
    assert s.shape == (1, 2)
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    assert s[0, 0] > s[0, 1]
