"""User-facing errors: one line naming the file and line (or key) at fault."""
from __future__ import annotations

import os


class DDROError(Exception):
    """An error the user can fix (bad input, bad config, refused overwrite).

    The CLI prints it as one line and exits with status 2; anything else is a bug
    and keeps its traceback.
    """


class InputError(DDROError):
    """A malformed input file, pinned to its path and (when known) line number."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
