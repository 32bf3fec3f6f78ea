"""Hugging Face Hub references for published models, docid tables and test sets.

Accepted forms (the same as the DDRO authors' evaluator)::

    hf:dataset:OWNER/NAME[@REVISION]:PATH/IN/REPO    one file of a dataset repository
    hf:model:OWNER/NAME[:REVISION]                   a model repository (a save_pretrained folder)
    OWNER/NAME                                       --model only, when no such local folder exists

References are parsed strictly (repository id charset, no '..', no absolute or empty path
parts, no backslashes) and the downloaded files must resolve inside the cache folder, so a
reference can never reach the file system outside it. Anything else is a local path and is
returned unchanged.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DDROError

log = logging.getLogger(__name__)

PREFIX = "hf:"
SYNTAX = "hf:dataset:OWNER/NAME[@REVISION]:PATH or hf:model:OWNER/NAME[:REVISION]"
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
_PATH_PART = re.compile(r"[^\x00-\x1f\x7f\\:]+")
# What a model snapshot needs: config, safetensors weights, tokenizer; never pickled weights.
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]


@dataclass(frozen=True)
class HubRef:
    repo_type: str           # "dataset" | "model"
    repo_id: str
    path: str | None         # file inside the repository (datasets)
    revision: str | None
    text: str                # the reference as given

    def describe(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.repo_type} {self.repo_id}{at}" + (f" file {self.path}" if self.path else "")


@dataclass(frozen=True)
class Resolved:
    path: Path               # a local file or folder
    source: str | None       # None for a local path; "<reference>@<commit>" for a download


def is_hub_ref(text: str) -> bool:
    return str(text).startswith(PREFIX)


def is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text and "--" not in text


def _bad(text: str, why: str) -> DDROError:
    return DDROError(f"invalid Hugging Face reference {text!r}: {why} (expected {SYNTAX})")


def _check_repo_id(text: str, repo_id: str) -> str:
    if not repo_id:
        raise _bad(text, "empty repository id")
    if not is_repo_id(repo_id):
        raise _bad(text, f"repository id {repo_id!r} must be OWNER/NAME of letters, digits, '.', '_', '-'")
    return repo_id


def _check_revision(text: str, revision: str | None) -> str | None:
    if revision is None:
        return None
    if not _REVISION.fullmatch(revision) or ".." in revision or "//" in revision or revision.endswith("/"):
        raise _bad(text, f"invalid revision {revision!r}")
    return revision


def _check_path(text: str, path: str) -> str:
    if not path:
        raise _bad(text, "empty file path")
    if "\\" in path:
        raise _bad(text, "backslashes are not allowed in the file path")
    if path.startswith("/"):
        raise _bad(text, "the file path must be relative to the repository")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise _bad(text, f"the file path may not contain empty, '.' or '..' parts ({path!r})")
        if not _PATH_PART.fullmatch(part):
            raise _bad(text, f"the file path may not contain ':' or control characters ({path!r})")
    return path


def parse_ref(text: str) -> HubRef:
    """Parse an `hf:` reference, strictly."""
    if not is_hub_ref(text):
        raise _bad(text, "does not start with 'hf:'")
    kind, _, rest = text[len(PREFIX):].partition(":")
    if kind == "dataset":
        repo, sep, path = rest.partition(":")
        if not sep:
            raise _bad(text, "a dataset reference needs a file path after the repository id")
        repo_id, at, revision = repo.partition("@")
        return HubRef("dataset", _check_repo_id(text, repo_id), _check_path(text, path),
                      _check_revision(text, revision if at else None), text)
    if kind == "model":
        repo_id, sep, revision = rest.partition(":")
        if sep and not revision:
            raise _bad(text, "empty revision")
        return HubRef("model", _check_repo_id(text, repo_id), None,
                      _check_revision(text, revision if sep else None), text)
    raise _bad(text, f"unknown kind {kind!r}")


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        from huggingface_hub import constants
        cache_dir = constants.HF_HUB_CACHE
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _inside(path: Path, root: Path, ref: HubRef) -> Path:
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise DDROError(f"{ref.text}: the download resolved to {resolved}, outside the cache {root}; refused")
    return resolved


def _commit(path: Path) -> str | None:
    """The commit a cache snapshot path belongs to (.../snapshots/<commit>/...)."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _download(ref: HubRef, cache_root: Path) -> str:
    import huggingface_hub
    from huggingface_hub import errors

    what = f"could not fetch {ref.describe()} from the Hugging Face Hub"
    try:
        if ref.path is not None:
            return huggingface_hub.hf_hub_download(ref.repo_id, ref.path, repo_type=ref.repo_type,
                                                   revision=ref.revision, cache_dir=str(cache_root))
        return huggingface_hub.snapshot_download(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision,
                                                 cache_dir=str(cache_root), allow_patterns=MODEL_FILES)
    except errors.LocalEntryNotFoundError:
        raise DDROError(f"{what}: not in the cache {cache_root} and the Hub may be unreachable "
                        "(check the connection, or pre-fill --cache_dir)") from None
    except errors.GatedRepoError:
        raise DDROError(f"{what}: the repository is gated (log in with `hf auth login`)") from None
    except errors.RepositoryNotFoundError:
        raise DDROError(f"{what}: no such {ref.repo_type} repository (or it is private)") from None
    except errors.RevisionNotFoundError:
        raise DDROError(f"{what}: no such revision") from None
    except errors.EntryNotFoundError:
        raise DDROError(f"{what}: no such file in the repository") from None
    except (OSError, ValueError) as e:  # connection and HTTP errors surface as OSError subclasses
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DDROError(f"{what}; the Hub may be unreachable ({e.__class__.__name__}: {first})") from None


def fetch(ref: HubRef, cache_dir: str | Path | None = None) -> Resolved:
    """Download a reference into the cache; the result is checked to lie inside it."""
    root = _cache_root(cache_dir)
    given = Path(_download(ref, root))
    path = _inside(given, root, ref)
    if path.is_dir():  # a model snapshot: every file (cache symlinks to blobs) stays inside too
        for item in path.rglob("*"):
            _inside(item, root, ref)
    elif not path.is_file():
        raise DDROError(f"{ref.text}: the download left no file at {path}")
    # keep the snapshot path (its file names; blobs are content hashes), recorded with its commit
    commit = _commit(given) or ref.revision or "unknown"
    return Resolved(given if given.is_absolute() else path, f"{ref.text}@{commit}")


def resolve_file(text: str, cache_dir: str | Path | None = None, what: str = "file") -> Resolved:
    """A local path as given, or an `hf:dataset:` reference downloaded into the cache."""
    if not is_hub_ref(text):
        return Resolved(Path(text), None)
    ref = parse_ref(text)
    if ref.repo_type != "dataset":
        raise _bad(text, f"{what} must be a file of a dataset repository (hf:dataset:OWNER/NAME:PATH)")
    return fetch(ref, cache_dir)


def resolve_model(text: str, cache_dir: str | Path | None = None) -> Resolved:
    """A local folder, an `hf:model:` reference, or a bare OWNER/NAME that is not a local path."""
    if is_hub_ref(text):
        ref = parse_ref(text)
        if ref.repo_type != "model":
            raise _bad(text, "--model must be a model repository (hf:model:OWNER/NAME[:REVISION])")
    elif not Path(text).exists() and is_repo_id(text):
        ref = HubRef("model", text, None, None, f"hf:model:{text}")
    else:
        return Resolved(Path(text), None)
    log.info("fetching %s from the Hugging Face Hub", ref.describe())
    return fetch(ref, cache_dir)
