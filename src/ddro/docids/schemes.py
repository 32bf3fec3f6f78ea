"""The registry of docid schemes: `--encoding NAME` is `SCHEMES[NAME]` (see `scheme.py`).

Adding a scheme: a module in this package with a `Scheme` subclass and its `SCHEME`, one
entry below, its options in `build.DocidArguments`, and its tests (tests/test_docids_<name>.py).
"""
from __future__ import annotations

from ..errors import DDROError
from . import atomic, pq, rq, semantic, tu
from .scheme import Scheme

SCHEMES: dict[str, Scheme] = {s.name: s for s in (pq.SCHEME, tu.SCHEME, atomic.SCHEME, semantic.SCHEME, rq.SCHEME)}
ENCODINGS = tuple(SCHEMES)


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise DDROError(f"unknown --encoding '{name}' (choose from {', '.join(ENCODINGS)})")
    return SCHEMES[name]
