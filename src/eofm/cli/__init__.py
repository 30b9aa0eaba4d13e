"""Command-line interface (``eofm``)."""
