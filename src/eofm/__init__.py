"""eofm: curate, pretrain and evaluate Earth-observation foundation models."""

from eofm.errors import EofmError

__version__ = "0.1.0"
__all__ = ["EofmError", "__version__"]
