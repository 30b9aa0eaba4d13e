"""Options shared by every protocol and the result each protocol returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eofm.evaluation.evaldata import default_cache_dir


@dataclass
class Options:
    """Protocol settings; ``None`` means the protocol's own default."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    out_dir: Path | None = None
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    cache: bool = True
    #: feature extraction
    batch_size: int = 256
    num_workers: int = 0
    amp: bool = False
    img_size: int | None = None
    #: kNN
    k: int = 20
    temperature: float = 0.07
    knn_backend: str = "torch"
    #: linear probe
    probe_optimizer: str = "adamw"
    probe_epochs: int = 100
    lrs: tuple[float, ...] | None = None
    wds: tuple[float, ...] | None = None
    #: fine-tuning and dense protocols
    epochs: float | None = None
    lr: float | None = None
    train_batch_size: int | None = None
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: int = 3
    decoder: str = "upernet"
    freeze: bool = True
    crop: int | None = None
    overlap: float = 0.25
    max_size: int | None = None
    overlays: int = 4
    #: regression / super-resolution / detection
    head: str = "linear"
    scale: int = 2
    score_threshold: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cache_dir"] = str(self.cache_dir)
        d["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        return d


@dataclass
class ProtocolOutput:
    """What one protocol returns for one model.

    ``metrics``: headline numbers (the summary table); ``details``: JSON-safe extras
    (per-class scores, sweeps, confusion matrix); ``artifacts``: arrays for the plots
    (embeddings, overlays), not written to JSON.
    """

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
