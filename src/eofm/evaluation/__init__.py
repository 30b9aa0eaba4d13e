"""Evaluation protocols for EO foundation models (``eofm evaluate``).

- :func:`run_evaluation` / :data:`TASKS`: ``knn``, ``linear``, ``finetune``, ``segmentation``,
  ``change``, ``detection``, ``regression``, ``superres`` on any dataset eofm reads, with
  random-init and RGB-checkpoint baselines, ``results.json`` and a Markdown/HTML report.
- Building blocks: :func:`extract_features` (cached), :func:`knn_scores`,
  :func:`train_linear_probe`, :func:`fraction_indices`, :class:`DenseModel`,
  :func:`predict_sliding`, :func:`detection_ap`, and the metric wrappers in
  :mod:`eofm.evaluation.metrics`.

See ``docs/evaluation.md``.
"""

from eofm.evaluation.common import Options, ProtocolOutput
from eofm.evaluation.data import (
    ArrayDataset,
    EvalData,
    fraction_indices,
    resolve_data,
    split_indices,
)
from eofm.evaluation.dense import DenseModel, predict_sliding
from eofm.evaluation.detection import (
    DotaObject,
    detection_ap,
    format_dota,
    parse_dota,
    polygon_iou,
)
from eofm.evaluation.features import Preprocess, extract_features, make_preprocess
from eofm.evaluation.knn import knn_scores
from eofm.evaluation.linear import LinearProbe, train_linear_probe
from eofm.evaluation.models import ResolvedModel, resolve_model
from eofm.evaluation.tasks import TASKS, format_summary, get_task, run_evaluation

__all__ = [
    "TASKS",
    "ArrayDataset",
    "DenseModel",
    "DotaObject",
    "EvalData",
    "LinearProbe",
    "Options",
    "Preprocess",
    "ProtocolOutput",
    "ResolvedModel",
    "detection_ap",
    "extract_features",
    "format_dota",
    "format_summary",
    "fraction_indices",
    "get_task",
    "knn_scores",
    "make_preprocess",
    "parse_dota",
    "polygon_iou",
    "predict_sliding",
    "resolve_data",
    "resolve_model",
    "run_evaluation",
    "split_indices",
    "train_linear_probe",
]
