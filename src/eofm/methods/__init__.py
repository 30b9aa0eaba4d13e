"""Self-supervised pretraining objectives, one per module, on the contract of ``base``."""

from eofm.methods.base import (
    SSLMethod,
    Views,
    ViewSpec,
    create_method,
    list_methods,
    register_method,
)

__all__ = ["SSLMethod", "ViewSpec", "Views", "create_method", "list_methods", "register_method"]
