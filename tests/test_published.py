"""Published checkpoints: `ddro eval` with hf: references and the DDRO authors' file formats.

The Hub is unreachable here, so `huggingface_hub.hf_hub_download` / `snapshot_download` are
replaced by a fake that lays files out as the real cache does (snapshots/<commit>/<path>
symlinked to blobs/<sha>) from fixtures written in the published formats.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from ddro import hub
from ddro.errors import DDROError, InputError
from ddro.eval import evaluate
from ddro.eval.published import guess_encoding, pq_layout, read_published_docids, read_published_queries
from ddro.modeling.checkpoint import check_docids, load_model
from model_fixtures import t5_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
M, K = 2, 4
DOCS = ["D0", "D1", "D2", "D3", "D4", "D5"]


def write_plain_t5(folder: Path, extra_rows: int) -> int:
    """A tiny T5 saved with save_pretrained only (no ddro files), its vocab grown by `extra_rows`
    as the authors' resize_token_embeddings does; returns the tokenizer size (the docid offset)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = t5_tokenizer(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok) + extra_rows, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return len(tok)


def pq_tokens(offset: int, i: int) -> list[int]:
    return [offset + K * m + (i // K ** m) % K for m in range(M)]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The three published artifacts, in their repository layouts."""
    root = tmp_path_factory.mktemp("published")
    model = root / "model"
    offset = write_plain_t5(model, M * K)
    docids = root / "docids" / "pq_tiny_docids.txt"
    docids.parent.mkdir()
    docids.write_text("".join(f"[{d}]\t{','.join(map(str, pq_tokens(offset, i)))}\n" for i, d in enumerate(DOCS)))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    lines = []
    # lines 1 and 3: one query
    for text, doc in [("protein cell", 1), ("brain", 4), ("protein cell", 3), ("drug risk", 0)]:
        lines.append({"input_ids": tok(text).input_ids, "query_id": f"[d{doc}]",
                      "doc_id": ",".join(map(str, pq_tokens(offset, doc)))})
    tests = root / "tests" / "msmarco" / "test" / "query_dev.t5_128_1.pq.tiny.json"
    tests.parent.mkdir(parents=True)
    tests.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"model": model, "docids": docids, "tests": tests, "offset": offset,
            "repos": {("model", "kiyam/ddro-tiny-pq"): model, ("dataset", "kiyam/ddro-docids"): docids.parent,
                      ("dataset", "kiyam/ddro-testsets"): root / "tests"}}


def _cache_file(cache: Path, repo_type: str, repo_id: str, rel: str, source: Path) -> Path:
    """Place `source` in the cache as huggingface_hub does: a snapshot symlink to a blob."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    link = repo / "snapshots" / COMMIT / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(os.path.relpath(blob, link.parent))
    return link


@pytest.fixture
def fake_hub(published, monkeypatch):
    """Serve the published fixtures through the real huggingface_hub entry points."""
    import fnmatch

    import huggingface_hub

    calls = []

    def hf_hub_download(repo_id, filename, *, repo_type=None, revision=None, cache_dir=None, **kw):
        calls.append(("file", repo_type, repo_id, filename, revision))
        source = published["repos"][(repo_type, repo_id)] / filename
        return str(_cache_file(Path(cache_dir), repo_type, repo_id, filename, source))

    def snapshot_download(repo_id, *, repo_type=None, revision=None, cache_dir=None, allow_patterns=None, **kw):
        calls.append(("snapshot", repo_type or "model", repo_id, tuple(allow_patterns or ()), revision))
        folder = published["repos"][(repo_type or "model", repo_id)]
        for f in sorted(folder.iterdir()):
            if not allow_patterns or any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                _cache_file(Path(cache_dir), "model", repo_id, f.name, f)
        return str(Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.fixture
def no_hub(monkeypatch):
    """Any download is a test failure: bad references must be refused before."""
    import huggingface_hub

    def refuse(*a, **kw):
        raise AssertionError(f"unexpected download {a} {kw}")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def eval_args(out, model, docids, test_file, cache):
    return ["--model", str(model), "--docids", str(docids), "--test_file", str(test_file), "--out", str(out),
            "--cache_dir", str(cache), "--beams", "3", "--batch_size", "2", "--device", "cpu"]


HF_DOCIDS = "hf:dataset:kiyam/ddro-docids:pq_tiny_docids.txt"
HF_TESTS = "hf:dataset:kiyam/ddro-testsets:msmarco/test/query_dev.t5_128_1.pq.tiny.json"


def read_run(folder: Path) -> list[list[str]]:
    return [line.split() for line in (folder / "run.trec").read_text().splitlines()]


# --- end to end -----------------------------------------------------------------------------

def test_eval_with_hub_references_matches_the_same_files_given_locally(published, fake_hub, tmp_path):
    cache = tmp_path / "cache"
    evaluate.main(eval_args(tmp_path / "hub", "kiyam/ddro-tiny-pq", HF_DOCIDS, HF_TESTS, cache))
    evaluate.main(eval_args(tmp_path / "local", published["model"], published["docids"], published["tests"],
                            cache))

    hub_run = read_run(tmp_path / "hub")
    assert hub_run == read_run(tmp_path / "local")   # references change where files come from, nothing else
    # 4 lines, two of them the same query: 3 queries, named by their first line, 3 beams each
    assert sorted({r[0] for r in hub_run}) == ["q1", "q2", "q4"]
    assert all(sum(r[0] == q for r in hub_run) == 3 for q in ("q1", "q2", "q4"))
    assert {r[2] for r in hub_run} <= {d.lower() for d in DOCS}   # '[D1]' and '[d1]' meet as 'd1'

    manifest = json.loads((tmp_path / "hub" / "manifest.json").read_text())
    assert manifest["counts"]["queries"] == 3
    assert manifest["config"]["model"] == "kiyam/ddro-tiny-pq" and manifest["config"]["docids"] == HF_DOCIDS
    assert manifest["inputs"]["model"] == f"hf:model:kiyam/ddro-tiny-pq@{COMMIT}"
    assert manifest["inputs"]["queries"] == f"{HF_TESTS}@{COMMIT}"
    assert manifest["inputs"]["docids"] == hashlib.sha256(published["docids"].read_bytes()).hexdigest()

    kinds = {(c[0], c[1], c[2]) for c in fake_hub}
    assert kinds == {("file", "dataset", "kiyam/ddro-docids"), ("file", "dataset", "kiyam/ddro-testsets"),
                     ("snapshot", "model", "kiyam/ddro-tiny-pq")}
    patterns = next(c[3] for c in fake_hub if c[0] == "snapshot")
    assert "*.safetensors" in patterns and not any(p.endswith(".bin") for p in patterns)   # no pickles
    assert all(p.resolve().is_relative_to(cache.resolve()) for p in cache.rglob("*"))


def test_hf_model_reference_with_revision_is_passed_to_the_hub(published, fake_hub, tmp_path):
    resolved = hub.resolve_model("hf:model:kiyam/ddro-tiny-pq:v1.0", tmp_path / "cache")
    assert fake_hub[-1][0] == "snapshot" and fake_hub[-1][4] == "v1.0"
    assert (resolved.path / "config.json").is_file()
    assert resolved.source == f"hf:model:kiyam/ddro-tiny-pq:v1.0@{COMMIT}"


def test_bare_owner_name_prefers_an_existing_local_folder(no_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kiyam" / "ddro-x").mkdir(parents=True)
    assert hub.resolve_model("kiyam/ddro-x") == hub.Resolved(Path("kiyam/ddro-x"), None)


# --- references refused before any download -----------------------------------------------

@pytest.mark.parametrize("ref", [
    "hf:dataset:a/b:../../etc/passwd", "hf:dataset:a/b:x/../../y", "hf:dataset:a:b", "hf:dataset:a/b",
    "hf:dataset:a/b:", "hf:dataset:a/b:/etc/passwd", "hf:dataset:a/b:x\\y", "hf:dataset:a/b:x//y",
    "hf:dataset:a/b:C:/x", "hf:dataset:../b:x", "hf:dataset:a/b/c:x", "hf:dataset:a/b@..:x",
    "hf:dataset:a/b@:x", "hf:dataset:a--b/c:x", "hf:dataset:a/b:x\ny", "hf:model:a/b", "hf:space:a/b:x", "hf:",
])
def test_malformed_file_references_exit_2_with_one_line(ref, published, no_hub, tmp_path, capsys):
    args = eval_args(tmp_path / "out", published["model"], ref, published["tests"], tmp_path / "cache")
    with pytest.raises(SystemExit) as e:
        evaluate.main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and "Hugging Face reference" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ref", ["hf:model:", "hf:model:a/b:", "hf:model:/etc", "hf:model:a/b/c",
                                 "hf:model:a/b:../x", "hf:dataset:a/b:x", "hf:model:a\\b"])
def test_malformed_model_references_exit_2(ref, published, no_hub, tmp_path, capsys):
    args = eval_args(tmp_path / "out", ref, published["docids"], published["tests"], tmp_path / "cache")
    with pytest.raises(SystemExit) as e:
        evaluate.main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Hugging Face reference" in err


def test_a_download_outside_the_cache_is_refused(published, monkeypatch, tmp_path):
    import huggingface_hub

    outside = tmp_path / "outside.txt"
    shutil.copyfile(published["docids"], outside)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **kw: str(outside))
    with pytest.raises(DDROError, match="outside the cache"):
        hub.resolve_file(HF_DOCIDS, tmp_path / "cache")

    # a link inside the cache that leads out of it is refused the same way
    link = tmp_path / "cache" / "datasets--a--b" / "snapshots" / COMMIT / "x.txt"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **kw: str(link))
    with pytest.raises(DDROError, match="outside the cache"):
        hub.resolve_file("hf:dataset:a/b:x.txt", tmp_path / "cache")


def test_unreachable_hub_is_one_line_naming_what_was_not_fetched(published, monkeypatch, tmp_path, capsys):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*a, **kw):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file\non the Hub.")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(SystemExit) as e:
        evaluate.main(eval_args(tmp_path / "out", published["model"], HF_DOCIDS, published["tests"],
                                tmp_path / "cache"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "kiyam/ddro-docids" in err and "pq_tiny_docids.txt" in err and "unreachable" in err


# --- the published formats --------------------------------------------------------------------

def test_published_docid_table_normalizes_ids_and_synthesizes_a_manifest(published):
    table = read_published_docids(published["docids"])
    offset = published["offset"]
    assert table.doc_ids == [d.lower() for d in DOCS]
    assert table.by_doc["d5"] == tuple(pq_tokens(offset, 5))
    assert table.encoding == "pq" and table.manifest["params"] == {"M": M, "K": K}   # K from the token bands
    assert table.manifest["vocab_offset"] == offset and table.required_vocab == offset + M * K
    assert table.manifest["eos_token_id"] is None


def test_pq_layout_follows_the_authors_layout():
    vocab = 32128   # t5-base: token = vocab_size + 256*m + code
    rows = [(vocab + 3, vocab + 256 + 255, vocab + 512), (vocab + 200, vocab + 256, vocab + 767)]
    assert pq_layout(rows) == (vocab, 256)
    assert pq_layout([(10, 11), (11, 10)]) is None   # the columns overlap: no bands


def test_nq_tu_table_drops_pad_and_keeps_one_eos(tmp_path):
    # NQ TU tables were written from model.generate output: decoder start 0, EOS 1, pad 0s after it
    path = tmp_path / "tu_nq_docids.txt"
    path.write_text("[12]\t0,55,66,1,0,0\n[Some Title]\t0,55,1\n34\t77,1\n")
    table = read_published_docids(path)
    assert table.encoding == "tu" and table.manifest["eos_token_id"] == 1
    assert table.doc_ids == ["12", "some_title", "34"]   # one namespace, whitespace kept out of run files
    assert table.tokens == [(55, 66, 1), (55, 1), (77, 1)]


@pytest.mark.parametrize("name,rows,want", [
    ("pq_nq_docids.txt", [[40, 50]], "pq"), ("tu_msmarco_docids.txt", [[5, 6, 1]], "tu"),
    ("url_title_docid.txt", [[5]], "tu"), ("atomic_docid.txt", [[40]], "atomic"),
    ("docids.txt", [[40], [41]], "atomic"), ("docids.txt", [[40, 50], [41, 51]], "pq"),
    ("docids.txt", [[5, 6, 1], [7, 1]], "tu"), ("docids.txt", [[5, 6], [7]], "tu"),
])
def test_encoding_is_guessed_from_the_name_then_the_tokens(name, rows, want):
    assert guess_encoding(name, rows) == want


@pytest.mark.parametrize("text,line", [
    ("[d0]\t40,41\n[d1] 42,43\n", 2),                 # no tab
    ("[d0]\t40,41\n[d1]\t42,x\n", 2),                  # not an integer
    ("[d0]\t40,41\n[d1]\t42,-3\n", 2),                 # negative
    ("[d0]\t40,41\n[D0]\t42,43\n", 2),                 # the same document after normalization
    ("[d0]\t40,41\n[]\t42,43\n", 2),                   # empty id
    ("[d0]\t40,41\n[d1]\t\n", 2),                      # no tokens
    ("[d0]\t40,41\n[d1]\t0,1\n", 2),                   # only pad/eos
])
def test_malformed_docid_table_lines_are_pinned_to_their_line(tmp_path, text, line):
    path = tmp_path / "pq_docids.txt"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        read_published_docids(path)
    assert e.value.line == line and str(e.value).startswith(f"{path}:{line}:")


def test_pq_table_with_mixed_lengths_is_refused(tmp_path):
    path = tmp_path / "pq_docids.txt"
    path.write_text("[d0]\t40,41\n[d1]\t42\n")
    with pytest.raises(InputError, match="same length"):
        read_published_docids(path)


def test_test_lines_of_one_query_merge_and_lists_are_accepted(tmp_path, published):
    table = read_published_docids(published["docids"])
    off = published["offset"]
    code = {d: ",".join(map(str, pq_tokens(off, i))) for i, d in enumerate(["d0", "d1", "d2"])}
    path = tmp_path / "t.json"
    rows = [{"input_ids": [5, 1], "query_id": "[d0]", "doc_id": code["d0"]},
            {"input_ids": [6, 1], "query_id": ["[D1]", "[d2]"], "doc_id": [code["d1"], code["d2"]]},
            {"input_ids": [5, 1], "query_id": "[d1]", "doc_id": code["d1"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries = read_published_queries(path, table)
    assert queries == [{"query_id": "q1", "input_ids": [5, 1], "relevant": {"d0": 1, "d1": 1}},
                       {"query_id": "q2", "input_ids": [6, 1], "relevant": {"d1": 1, "d2": 1}}]
    assert [q["query_id"] for q in read_published_queries(path, table, max_queries=1)] == ["q1"]


@pytest.mark.parametrize("row,why", [
    ({"input_ids": [], "query_id": "[d0]", "doc_id": "1"}, "input_ids"),
    ({"input_ids": [5, "x"], "query_id": "[d0]", "doc_id": "1"}, "input_ids"),
    ({"input_ids": [5, True], "query_id": "[d0]", "doc_id": "1"}, "input_ids"),
    ({"input_ids": [5], "doc_id": "1"}, "query_id"),
    ({"input_ids": [5], "query_id": 7, "doc_id": "1"}, "query_id"),
    ({"input_ids": [5], "query_id": "[d0]", "doc_id": "a,b"}, "doc_id"),
    ({"input_ids": [5], "query_id": ["[d0]", "[d1]"], "doc_id": "1"}, "doc_id"),
    ({"input_ids": [5], "query_id": "[]", "doc_id": "1"}, "empty document id"),
])
def test_malformed_test_lines_are_pinned_to_their_line(tmp_path, row, why):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"input_ids": [5], "query_id": "[d0]", "doc_id": "1"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError, match=why) as e:
        read_published_queries(path)
    assert e.value.line == 2


def test_test_set_of_another_docid_table_is_refused(tmp_path, published):
    table = read_published_docids(published["docids"])
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"input_ids": [5, 1], "query_id": "[other7]", "doc_id": "1,2"}) + "\n")
    with pytest.raises(DDROError, match="none of its 1 relevant documents"):
        read_published_queries(path, table)


def test_malformed_published_file_through_the_cli_is_file_and_line(published, tmp_path, capsys):
    bad = tmp_path / "pq_bad_docids.txt"
    bad.write_text(published["docids"].read_text() + "[d9]\t1,,2\n")
    with pytest.raises(SystemExit) as e:
        evaluate.main(eval_args(tmp_path / "out", published["model"], bad, published["tests"], tmp_path / "cache"))
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {bad}:{len(DOCS) + 1}:")


# --- plain save_pretrained checkpoints ------------------------------------------------------

def test_plain_checkpoint_loads_and_its_vocabulary_is_still_checked(published, tmp_path):
    table = read_published_docids(published["docids"])
    loaded = load_model(published["model"], table)
    assert loaded.info == {"plain": True} and loaded.path == published["model"]

    small = tmp_path / "small"
    write_plain_t5(small, 2)   # too few rows for the 8 PQ tokens
    with pytest.raises(DDROError, match="vocabulary rows"):
        load_model(small, table)


def test_plain_checkpoint_without_safetensors_is_refused(published, tmp_path):
    folder = tmp_path / "bin_only"
    shutil.copytree(published["model"], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(DDROError, match="only safetensors"):
        load_model(folder, read_published_docids(published["docids"]))


def test_ddro_checkpoint_with_a_published_table_file_is_a_clear_error(published):
    table = read_published_docids(published["docids"])
    with pytest.raises(DDROError, match="not a docid folder"):
        check_docids({"docids": "abc"}, 10 ** 6, table, "checkpoint x")
