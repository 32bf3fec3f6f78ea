"""Small file helpers shared by every stage: hashing, JSON(L), atomic outputs, resume journals."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import DDROError, InputError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def open_text(path: str | os.PathLike, mode: str = "rt"):
    """Open a text file, transparently gunzipping `*.gz`; a missing file is a clear error."""
    path = Path(path)
    if "r" in mode and not path.is_file():
        raise InputError(path, "file not found")
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (line number, line without newline); bad UTF-8 or gzip become InputErrors."""
    lineno = 0
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                yield lineno, line.rstrip("\r\n")
    except UnicodeDecodeError as e:
        # decoding runs ahead of the lines handed out (buffering): find the line itself
        raise InputError(path, f"invalid UTF-8 ({e.reason})", _first_undecodable_line(path) or lineno + 1) from None
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(path, f"unreadable ({e.__class__.__name__}: {e})", lineno + 1) from None


def _first_undecodable_line(path: str | os.PathLike) -> int | None:
    """Number of the first line that is not UTF-8 (lines split at '\\n'), for error messages."""
    try:
        with (gzip.open(path, "rb") if Path(path).suffix == ".gz" else open(path, "rb")) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return lineno
    except (EOFError, OSError):
        pass
    return None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; each must be a JSON object."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"invalid JSON ({e.msg})", lineno) from None
        if not isinstance(obj, dict):
            raise InputError(path, "expected a JSON object", lineno)
        yield lineno, obj


def dumps_line(obj: Any) -> str:
    """One canonical JSONL line (stable key order, real UTF-8) so reruns are byte-identical."""
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON ({e.msg})", e.lineno) from None
    except UnicodeDecodeError as e:
        raise InputError(path, f"invalid UTF-8 ({e.reason})") from None


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to touch an existing output unless asked to: call before any long work."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DDROError(f"{out}: already exists; pass --overwrite to replace it")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside `out`, rename it into place on success.

    A crash or error leaves `out` untouched (the old version, if any, survives) and
    removes the temporary folder, so no later stage can mistake half an output for a whole.
    """
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the output should not be
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, overwrite: bool = False, mode: str = "w") -> Iterator[Any]:
    """Write a single file under a temporary name and rename it into place when complete."""
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with open(tmp, mode, **kwargs) as f:
            yield f
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, out)


# ----------------------------------------------------------------------------- surviving a kill

FAULT_ENV = "DDRO_FAULT"


def fault_point(name: str) -> None:
    """Test hook for kill/resume tests: with DDRO_FAULT=<name>:<n> in the environment, the process
    SIGKILLs itself the n-th time it reaches `fault_point(name)`; without it, nothing happens."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or spec.rpartition(":")[0] != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(spec.rpartition(":")[2]):
        os.kill(os.getpid(), signal.SIGKILL)


_fault_counts: dict[str, int] = {}


def partial_dir(out: str | os.PathLike) -> Path:
    """Where an unfinished run keeps its journal: a hidden folder beside its output."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


class Journal:
    """The resume point of a long stage: an append-only data file plus a committed state.

    `append(data, units, stats)` appends bytes, fsyncs them, then atomically replaces
    `state.json` (bytes and units committed so far, the caller's running stats). A journal
    reopened with the same `identity` is cut back to its last commit (whatever a kill left
    after it is dropped), so the stage goes on from `done` units; one with another identity
    is refused, or discarded with `overwrite`. A journal is never an output: the stage builds
    its output from `read_bytes()` (atomically) and then `discard()`s it.
    """

    STATE = "state.json"

    def __init__(self, folder: str | os.PathLike, identity: dict, overwrite: bool = False, name: str = "data"):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.state = {"identity": identity, "bytes": 0, "done": 0, "stats": {}}
        if (self.folder / self.STATE).is_file() and self.path.is_file():
            state = read_json(self.folder / self.STATE)
            if state.get("identity") != identity:
                if not overwrite:
                    raise DDROError(f"{self.folder}: an unfinished run with other settings; remove it or pass "
                                    "--overwrite to start over")
            elif self.path.stat().st_size >= state["bytes"]:
                self.state = state
                with open(self.path, "r+b") as f:  # drop what was written after the last commit
                    f.truncate(state["bytes"])
        if self.state["done"] == 0:  # nothing to resume; the folder appears with the first append
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def done(self) -> int:
        return self.state["done"]

    @property
    def stats(self) -> dict:
        return self.state["stats"]

    def append(self, data: bytes, units: int, stats: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        fault_point("journal")  # written but not committed: a resumed run must drop it
        self.state = {**self.state, "bytes": size, "done": self.done + int(units),
                      "stats": self.stats if stats is None else stats}
        write_json(self.folder / f"{self.STATE}.tmp", self.state)
        os.replace(self.folder / f"{self.STATE}.tmp", self.folder / self.STATE)

    def read_bytes(self) -> bytes:
        if not self.done:
            return b""
        with open(self.path, "rb") as f:
            return f.read(self.state["bytes"])

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

