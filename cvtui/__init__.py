"""cvtui: a research lab's GPU servers as one pool, over nothing but SSH.

`import cvtui` stays cheap: `cvtui.Lab` (the library, cvtui/api.py) and its result types are
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvtui.api import Lab
    from cvtui.errors import CvtuiError
    from cvtui.results import ExecResult, InferResult, MetricRow, RunEvent, Submitted

__all__ = [
    "CvtuiError",
    "ExecResult",
    "InferResult",
    "Lab",
    "MetricRow",
    "RunEvent",
    "Submitted",
]

_HOMES = {
    "Lab": "cvtui.api",
    "CvtuiError": "cvtui.errors",
    "ExecResult": "cvtui.results",
    "InferResult": "cvtui.results",
    "MetricRow": "cvtui.results",
    "RunEvent": "cvtui.results",
    "Submitted": "cvtui.results",
}


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module 'cvtui' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup skips this function
    return value
