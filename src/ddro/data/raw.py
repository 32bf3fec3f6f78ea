"""Helpers for builders that read raw dumps: locating raw files, parking documents on disk."""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DDROError
from ..io import dumps_line


def raw_file(raw_dir: str | Path, name: str) -> Path:
    """`name.gz` or `name` in `raw_dir` (the gzip wins); a clear error when neither exists."""
    raw_dir = Path(raw_dir)
    for path in (raw_dir / f"{name}.gz", raw_dir / name):
        if path.is_file():
            return path
    raise DDROError(f"{raw_dir / name}(.gz): raw file not found (see scripts/data/)")


class DocSpool:
    """Documents parked on disk as JSON lines, read back by id in any order.

    Only (offset, length) per id stays in memory. Lives in a temporary folder beside the
    output (same disk), removed with it.
    """

    def __init__(self, folder: Path):
        self._file = open(folder / "spool.jsonl", "w+b")
        self.index: dict[str, tuple[int, int]] = {}

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.index

    def __len__(self) -> int:
        return len(self.index)

    def add(self, doc: dict) -> None:
        data = dumps_line(doc).encode("utf-8")
        self._file.seek(0, 2)
        self.index[doc["_id"]] = (self._file.tell(), len(data))
        self._file.write(data)

    def read(self, order: Iterable[str]) -> Iterator[dict]:
        for doc_id in order:
            offset, length = self.index[doc_id]
            self._file.seek(offset)
            yield json.loads(self._file.read(length))

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def spool_beside(out: str | Path) -> Iterator[DocSpool]:
    """A DocSpool in a hidden temporary folder next to `out`, removed afterwards."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.spool-", dir=out.parent) as tmp:
        spool = DocSpool(Path(tmp))
        try:
            yield spool
        finally:
            spool.close()
