"""Work split across processes: torchrun ranks, SLURM array tasks, or both, merged through files.

Two ways to run several workers on one job (evaluation, embeddings, pseudo-queries):

- `torchrun --nproc_per_node N ...`: every rank takes one shard (RANK of WORLD_SIZE, read
  from the environment torchrun sets); a gloo barrier lets rank 0 merge once all are written.
- independent processes, e.g. a SLURM array: `--num_shards K --shard_index i` (defaults:
  the environment variables DDRO_NUM_SHARDS / DDRO_SHARD_INDEX). Each task writes its shard
  and the task that completes the set merges them (the others exit after their own shard).

Both together (an array of torchrun jobs) make K * N shards. Shards are contiguous blocks of
the work units (whole batches), so each unit is computed exactly as in one process and the
merge, in shard order, gives the single-process output byte for byte.

A shard set lives in `<out>.shards/`: per shard a payload (`<tag>.<i>-of-<K>.<ext>`) and,
written last, a marker `<tag>.<i>-of-<K>.json`; `tag` hashes the run's settings, so shards of
an earlier run with other settings are never mixed in (and a finished shard is reused when
a task is rerun). The folder is removed after a successful merge.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import DDROError
from .io import atomic_file, read_json

log = logging.getLogger(__name__)

NUM_SHARDS_ENV = "DDRO_NUM_SHARDS"
SHARD_INDEX_ENV = "DDRO_SHARD_INDEX"
# Ranks that finish early wait at the barrier for the slowest one; a failed rank makes
# torchrun stop the others, so a long timeout never hides a crash.
BARRIER_TIMEOUT = datetime.timedelta(hours=24)

SHARD_HELP = ("split the work into this many shards, e.g. a SLURM array (default: $DDRO_NUM_SHARDS or 1); "
              "each task writes its shard to <out>.shards/ and the task that completes the set merges them into "
              "--out. Under torchrun each rank also takes its own part")
INDEX_HELP = "this task's shard, 0-based (default: $DDRO_SHARD_INDEX or 0)"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise DDROError(f"${name} must be an integer, got {value!r}") from None


def default_num_shards() -> int:
    return env_int(NUM_SHARDS_ENV, 1)


def default_shard_index() -> int:
    return env_int(SHARD_INDEX_ENV, 0)


def rank() -> int:
    return env_int("RANK", 0)


def world_size() -> int:
    return env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    return env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    return rank() == 0


def device_for_rank(device: str | None) -> str:
    """The device this process should use: an explicit one, else its own GPU under torchrun."""
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return f"cuda:{local_rank()}" if world_size() > 1 else "cuda"
    return "cpu"


def init_process_group() -> bool:
    """Join torchrun's process group (gloo: it only carries barriers); False when not under torchrun."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return True


def barrier() -> None:
    """Wait for every torchrun rank (no-op in a single process)."""
    if init_process_group():
        import torch.distributed as dist

        dist.barrier()


def leave_process_group() -> None:
    """After a successful run: wait for every rank, then tear the process group down.

    A rank that returns early (only rank 0 writes the model) and exits with the group still up can
    abort in the collective library's threads ("terminate called without an active exception")
    while rank 0 is still saving; torchrun then reports the job as failed."""
    if "torch.distributed" not in sys.modules:  # a stage that never imported torch has no group
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def block(self, n: int) -> range:
        """This shard's contiguous part of n units (the first n % count shards get one more)."""
        base, extra = divmod(n, self.count)
        start = self.index * base + min(self.index, extra)
        return range(start, start + base + (self.index < extra))

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"


def plan_shard(num_shards: int | None = None, shard_index: int | None = None) -> Shard:
    """This process's shard: task `shard_index` of `num_shards`, subdivided by the torchrun ranks."""
    k = default_num_shards() if num_shards is None else num_shards
    i = default_shard_index() if shard_index is None else shard_index
    if k < 1 or not 0 <= i < k:
        raise DDROError(f"need 0 <= --shard_index < --num_shards, got shard {i} of {k}")
    return Shard(i * world_size() + rank(), k * world_size())


def settings_tag(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def shard_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.shards")


class ShardSet:
    """The shards of one run (same settings) in `<out>.shards/`."""

    def __init__(self, out: str | os.PathLike, settings: dict, count: int, ext: str):
        self.folder, self.tag, self.count, self.ext = shard_folder(out), settings_tag(settings), count, ext
        self.settings = settings

    def payload(self, shard: Shard) -> Path:
        return self.folder / f"{self.tag}.{shard.name}.{self.ext}"

    def marker(self, shard: Shard) -> Path:
        return self.folder / f"{self.tag}.{shard.name}.json"

    def shards(self) -> list[Shard]:
        return [Shard(i, self.count) for i in range(self.count)]

    def done(self, shard: Shard) -> dict | None:
        """The marker of a finished shard (its statistics), or None."""
        marker = self.marker(shard)
        if not (marker.is_file() and self.payload(shard).is_file()):
            return None
        info = read_json(marker)
        return info if info.get("settings") == json.loads(json.dumps(self.settings, default=str)) else None

    @contextlib.contextmanager
    def writing(self, shard: Shard, mode: str = "w") -> Iterator:
        """Write a shard's payload atomically (the marker follows with `finish`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.marker(shard).unlink(missing_ok=True)
        with atomic_file(self.payload(shard), overwrite=True, mode=mode) as f:
            yield f

    def finish(self, shard: Shard, **stats) -> None:
        with atomic_file(self.marker(shard), overwrite=True) as f:
            json.dump({"shard": shard.index, "num_shards": shard.count, "settings": self.settings, **stats},
                      f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    def missing(self) -> list[int]:
        return [s.index for s in self.shards() if self.done(s) is None]

    def claim_merge(self) -> bool:
        """True for exactly one task of the set once all shards are done (an exclusive lock file)."""
        if self.missing():
            return False
        try:
            fd = os.open(self.folder / f"{self.tag}.merging", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            log.info("%s: another task is merging the shards", self.folder)
            return False
        os.close(fd)
        return True

    def require_complete(self) -> list[dict]:
        missing = self.missing()
        if missing:
            raise DDROError(f"{self.folder}: shard(s) {', '.join(map(str, missing))} of {self.count} missing "
                            "for these settings; run them (with the same arguments) first")
        return [self.done(s) for s in self.shards()]

    def cleanup(self) -> None:
        """Remove this run's shard files (and the folder once empty)."""
        for path in self.folder.glob(f"{self.tag}.*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()
