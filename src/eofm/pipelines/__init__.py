"""End-to-end pipelines built from eofm's library functions (never from :mod:`eofm.cli`).

- :mod:`eofm.pipelines.demo`: ``eofm demo``, the whole life of a model on one folder;
- :mod:`eofm.pipelines.curate`: ``eofm curate`` as a function (:func:`run_curate`).
"""
