"""Old home of the demo: a re-export of :mod:`eofm.pipelines.demo` (kept for old imports)."""

from __future__ import annotations

from eofm.pipelines.demo import (
    DemoSettings,
    add_arguments,
    demo_recipe,
    run_demo,
    settings_from_args,
)

__all__ = ["DemoSettings", "add_arguments", "demo_recipe", "run_demo", "settings_from_args"]
