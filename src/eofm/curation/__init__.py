"""Data curation: embeddings, hierarchical k-means, balanced sampling, dynamic pruning.

- :func:`extract_embeddings` (``embed.py``): any model over any dataset into a memory-mapped
  ``.npy``, resumable, split across ranks.
- :func:`hierarchical_kmeans` (``kmeans.py``): k-means++ seeds, faiss Lloyd iterations and
  the resampling refinement of Vo et al. 2024, level by level.
- :func:`hierarchical_sampling`, :func:`near_duplicates` (``sampling.py``): balanced
  sampling to a target size with a within-cluster diversity parameter; near-duplicate removal.
- :func:`curate_embeddings` (``pipeline.py``): one pass of the above; ``report.py`` writes
  the manifest and the report of ``eofm curate``.
- :class:`DynamicPruning` (``dynamic.py``): the OceanSAR-1 callback that re-curates the
  training set with the model being trained.
"""

from eofm.curation.embed import embedding_progress, extract_embeddings, load_embeddings
from eofm.curation.kmeans import (
    HierarchicalClusters,
    assign,
    auto_clusters,
    hierarchical_kmeans,
    kmeans,
    kmeans_plusplus,
)
from eofm.curation.pipeline import CurationConfig, CurationResult, curate_embeddings
from eofm.curation.sampling import (
    balanced_cut,
    entropy,
    hierarchical_sampling,
    near_duplicates,
    resolve_target,
    select_within_clusters,
)

__all__ = [
    "CurationConfig",
    "CurationResult",
    "HierarchicalClusters",
    "assign",
    "auto_clusters",
    "balanced_cut",
    "curate_embeddings",
    "embedding_progress",
    "entropy",
    "extract_embeddings",
    "hierarchical_kmeans",
    "hierarchical_sampling",
    "kmeans",
    "kmeans_plusplus",
    "load_embeddings",
    "near_duplicates",
    "resolve_target",
    "select_within_clusters",
]
