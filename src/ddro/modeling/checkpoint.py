"""Checkpoint folders: what `save_model` writes and `load_model` checks.

A checkpoint folder is a plain `save_pretrained` folder, loadable anywhere with
`AutoModelForSeq2SeqLM.from_pretrained(folder)` + `AutoTokenizer.from_pretrained(folder)` (a model
with a dense prior after `import ddro.modeling`, which registers its model type)::

    config.json, generation_config.json, model.safetensors   the model (safetensors only)
    tokenizer.json, tokenizer_config.json, ...               the encoder's tokenizer
    docids.json        a byte copy of the docid folder's manifest.json (so its sha256 is the
                       docid folder's identity, `manifest_hash`)
    ddro_model.json    construction, docid manifest hash, vocabulary (rows, offset, pad,
                       decoder start, eos), tokenizer identity, sizes; with a dense prior
                       (`prior.py`) its form, initial tau and the codebook's sha256

`load_model(folder, docids=table)` refuses a checkpoint whose output vocabulary cannot
hold the table's tokens or that was trained for another docid table.

A plain `save_pretrained` seq2seq folder without `ddro_model.json` (a published model such
as `kiyam/ddro-msmarco-pq`) loads too, safetensors only and never with remote code; only the
vocabulary check applies to it, as it records no docid table.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..docids.table import DocidTable
from ..errors import DDROError
from ..io import read_json, write_json
from ..manifest import MANIFEST, manifest_hash_or_none
from ..tokenizer import check_tokenizer
from .build import keep_head_untied, output_rows, special_ids
from .prior import check_prior  # also registers the dense-prior model with the Auto classes

log = logging.getLogger(__name__)

MODEL_INFO = "ddro_model.json"
DOCIDS_COPY = "docids.json"
POINTER = "final.json"  # an SFT output folder's pointer to its last completed stage


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    info: dict
    path: Path


def save_model(model, tokenizer, info: dict, table: DocidTable, folder: str | Path) -> None:
    """Write a loadable checkpoint folder (weights as safetensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copyfile(Path(table.path) / MANIFEST, folder / DOCIDS_COPY)
    info = {**info, "vocab": {**info.get("vocab", {}), "decoder_rows": output_rows(model), **special_ids(model)}}
    write_json(folder / MODEL_INFO, info)


def is_plain_checkpoint(path: str | Path) -> bool:
    """A save_pretrained folder that is not a ddro checkpoint (no ddro_model.json, no final.json)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / MODEL_INFO).is_file() \
        and not (path / POINTER).is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the stage an SFT output folder's `final.json` points to."""
    path = Path(path)
    if (path / MODEL_INFO).is_file():
        return path
    if (path / POINTER).is_file():
        pointer = read_json(path / POINTER)
        if pointer.get("complete") is False:  # killed, or still training, after an earlier stage
            raise DDROError(f"{path}: unfinished SFT run (last completed: {pointer['folder']}); continue it with "
                            f"`ddro train sft --resume`, or name {path / pointer['folder']} itself")
        return resolve_checkpoint(path / pointer["folder"])
    if path.is_file() and path.name == POINTER:
        return resolve_checkpoint(path.parent)
    raise DDROError(f"{path}: not a ddro checkpoint (no {MODEL_INFO} or {POINTER})")


def _weights_file(folder: Path) -> None:
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        raise DDROError(f"{folder}: no model.safetensors (only safetensors weights are loaded)")


def check_docids(info: dict, rows: int, table: DocidTable, what: str) -> None:
    table.check_vocab(rows, what)
    have = manifest_hash_or_none(table.path) if table.path is not None and Path(table.path).is_dir() else None
    if have is None:
        raise DDROError(f"{what} was trained for the docid folder with manifest {str(info.get('docids'))[:12]}; "
                        f"{table.path} is not a docid folder")
    if info.get("docids") != have:
        raise DDROError(f"{what} was trained for another docid table (manifest {str(info.get('docids'))[:12]}), "
                        f"not {table.path} ({have[:12]})")


def load_model(path: str | Path, docids: DocidTable | str | Path | None = None, *,
               check_missing: bool = True) -> LoadedModel:
    """Load a checkpoint folder (or an SFT output folder's final stage), checked against `docids`."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    plain = is_plain_checkpoint(path)
    folder = Path(path) if plain else resolve_checkpoint(path)
    info = {"plain": True} if plain else read_json(folder / MODEL_INFO)
    _weights_file(folder)
    table = DocidTable.load(docids) if isinstance(docids, (str, Path)) else docids
    if table is not None:  # cheap checks before reading weights
        rows = read_json(folder / "config.json").get("vocab_size", 0) if plain else \
            info.get("vocab", {}).get("decoder_rows", 0)
        table.check_vocab(rows if isinstance(rows, int) else 0, f"checkpoint {folder}")
    # An untied T5 head triggers a "will NOT tie them" warning that is exactly what we want; real
    # problems (missing or unexpected weights) are checked below instead of logged.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, loading = AutoModelForSeq2SeqLM.from_pretrained(
            folder, use_safetensors=True, trust_remote_code=False, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, SafetensorError) as e:  # e.g. truncated weights
        raise DDROError(f"cannot load checkpoint {folder}: {' '.join(str(e).split())}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = {k: v for k, v in loading.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if check_missing and bad:
        raise DDROError(f"{folder}: weights do not match the model config ({bad})")
    if info.get("new_head"):
        keep_head_untied(model)
    check_tokenizer(info.get("tokenizer") or {}, tokenizer, f"checkpoint {folder}")
    check_prior(model, info, table, f"checkpoint {folder}")
    if table is not None and plain:
        table.check_vocab(output_rows(model), f"checkpoint {folder}")
    elif table is not None:
        check_docids(info, output_rows(model), table, f"checkpoint {folder}")
    return LoadedModel(model, tokenizer, info, folder)
