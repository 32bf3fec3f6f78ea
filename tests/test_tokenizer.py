"""`ddro tokenizer train`: a sentencepiece model in T5's layout that transformers loads."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ddro.data.collection import write_collection
from ddro.errors import DDROError
from ddro.manifest import manifest_hash
from ddro.tokenizer import TokenizerArguments, load_tokenizer, main, tokenizer_identity, train_tokenizer

SYLLABLES = "ka lo mi ter ran so vu pel qui dor an ex sta bio gen cel pro tein".split()


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """60 documents of made-up words (some capitalised), with sentences for half of them."""
    rng = random.Random(0)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(300)]
    docs = []
    for i in range(60):
        sents = [" ".join(rng.choices(words, k=12)).capitalize() + "." for _ in range(5)]
        doc = {"_id": str(i), "title": " ".join(rng.choices(words, k=4)).title(), "text": " ".join(sents)}
        docs.append({**doc, "sents": sents} if i % 2 else doc)
    folder = tmp_path_factory.mktemp("collection")
    write_collection(folder, docs, {"q1": "Kalomi terran query"}, {"train": {"q1": {"0": 1}}}, source="test")
    return folder


def train(collection: Path, out: Path, **kw):
    return train_tokenizer(TokenizerArguments(collection=str(collection), out=str(out), **kw))


def test_trained_tokenizer_loads_with_t5_layout(tmp_path, collection):
    from transformers import T5Tokenizer

    out = tmp_path / "tok"
    train(collection, out, vocab_size=300, query_split="train")
    tok = T5Tokenizer.from_pretrained(str(out))
    assert len(tok) == 300 + 100
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    # T5: sentinels sit on top of the pieces, <extra_id_0> highest
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 399
    assert tok.convert_tokens_to_ids("<extra_id_99>") == 300
    ids = tok("kalomi terran").input_ids
    assert ids[-1] == 1 and 2 not in ids and max(ids) < 300
    assert tok.decode(ids, skip_special_tokens=True) == "kalomi terran"
    # the toolkit's loader (AutoTokenizer) sees the same vocabulary
    again = load_tokenizer(str(out))
    assert tokenizer_identity(again)["vocab_sha256"] == tokenizer_identity(tok)["vocab_sha256"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "tokenizer" and manifest["inputs"]["collection"] == manifest_hash(collection)
    assert manifest["tokenizer"]["vocab_sha256"] == tokenizer_identity(tok)["vocab_sha256"]
    assert manifest["special_ids"] == {"pad": 0, "eos": 1, "unk": 2}
    assert {"spiece.model", "tokenizer_config.json"} <= set(manifest["files"])


def test_training_is_deterministic(tmp_path, collection):
    out = tmp_path / "tok"
    train(collection, out, vocab_size=250, seed=3, overwrite=True)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    train(collection, out, vocab_size=250, seed=3, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_lowercase_folds_case(tmp_path, collection):
    tok = train(collection, tmp_path / "lc", vocab_size=150, lowercase=True)
    assert tok("KALOMI Terran").input_ids == tok("kalomi terran").input_ids
    cased = train(collection, tmp_path / "cased", vocab_size=150)
    assert cased("KALOMI").input_ids != cased("kalomi").input_ids


def test_refusals(tmp_path, collection, capsys):
    with pytest.raises(DDROError, match="Vocabulary size"):
        train(collection, tmp_path / "big", vocab_size=50_000)
    with pytest.raises(DDROError, match="no qrels for split 'dev'"):
        train(collection, tmp_path / "q", query_split="dev")
    (tmp_path / "exists").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["--collection", str(collection), "--out", str(tmp_path / "exists"), "--vocab-size", "250"])
    assert exit_.value.code == 2 and "already exists" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
