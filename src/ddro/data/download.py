"""Downloads into a local cache, with a progress bar and an atomic rename."""
from __future__ import annotations

import logging
import re
import shutil
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DDROError

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def safe_name(name: str, what: str = "name") -> str:
    """A single path component: no separators, no '..', so it cannot escape its cache."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise DDROError(f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def download(url: str, dest: Path) -> Path:
    """Fetch `url` to `dest` unless it is already there."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DDROError(f"could not download {url} ({e}); offline? pass a local folder instead") from None
    tmp.replace(dest)
    return dest


def extract_zip(archive: Path, dest: Path) -> Path:
    """Unpack `archive` into `dest` (refusing members that would land outside it)."""
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (tmp / member).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise DDROError(f"{archive}: member {member!r} escapes the archive folder")
            zf.extractall(tmp)
    except zipfile.BadZipFile:
        raise DDROError(f"{archive}: not a valid zip file (delete it to download again)") from None
    tmp.replace(dest)
    return dest
