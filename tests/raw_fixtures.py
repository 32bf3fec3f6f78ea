"""Small fixtures in real formats: raw MS MARCO / Natural Questions files, a tiny T5 tokenizer.

Tests build their fixtures with these in tmp_path; no data file is committed.
A path ending in `.gz` is written gzip-compressed, anything else as plain text.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def write_tsv(path: Path, rows: list[tuple | str]) -> Path:
    """One line per row: a tuple is joined by tabs, a string is written as is (malformed rows)."""
    return write_text(path, "".join(("\t".join(r) if isinstance(r, tuple) else r) + "\n" for r in rows))


def write_trec_qrels(path: Path, pairs: list[tuple[str, str]], rel: int = 1) -> Path:
    """MS MARCO document qrels: `qid 0 docid rel`, space separated."""
    return write_text(path, "".join(f"{q} 0 {d} {rel}\n" for q, d in pairs))


def write_jsonl(path: Path, objs: list[dict | str]) -> Path:
    """One JSON object per line; a string is written verbatim (to plant a bad line)."""
    return write_text(path, "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))


def wiki_page_tokens(title: str, abstract: str, sections: list[str], lists: list[list[str]]) -> list[str]:
    """An NQ-tokenized Wikipedia page: HTML tags are separate tokens, like the real files."""
    tokens = f"{title} - Wikipedia <H1> {title} </H1> Jump to : navigation , search".split()
    tokens += ["<Table>", "<Tr>", "<Td>", *"Infobox cell".split(), "</Td>", "</Tr>", "</Table>"]
    tokens += ["<P>", *abstract.split(), "</P>"]
    for section in sections:
        tokens += ["<H2>", "Section", "</H2>", "<P>", *section.split(), "</P>"]
    for items in lists:
        tokens.append("<Ul>")
        for item in items:
            tokens += ["<Li>", *item.split(), "</Li>"]
        tokens.append("</Ul>")
    return tokens


def nq_simplified_line(example_id: int, question: str, tokens: list[str], url: str = "") -> dict:
    """A line of simplified-nq-train.jsonl (no `document_title`: the title is the <H1>)."""
    return {"document_text": " ".join(tokens), "long_answer_candidates": [], "question_text": question,
            "annotations": [{"yes_no_answer": "NONE", "long_answer": {"start_token": -1, "end_token": -1,
                                                                      "candidate_index": -1},
                             "short_answers": [], "annotation_id": 1}],
            "document_url": url or "https://en.wikipedia.org//w/index.php?title=X", "example_id": example_id}


def nq_full_line(example_id: int, question: str, title: str, tokens: list[str], url: str = "") -> dict:
    """A line of the full-format dev set (nq-dev-*.jsonl): `document_tokens`, `document_title`."""
    doc_tokens, offset = [], 0
    for token in tokens:
        doc_tokens.append({"token": token, "start_byte": offset, "end_byte": offset + len(token),
                           "html_token": token.startswith("<")})
        offset += len(token) + 1
    return {"example_id": example_id, "question_text": question, "question_tokens": question.split(),
            "document_title": title, "document_url": url or f"https://en.wikipedia.org//w/index.php?title={title}",
            "document_html": "<html>" + " ".join(tokens) + "</html>", "document_tokens": doc_tokens,
            "long_answer_candidates": [], "annotations": []}


WORDS = ("protein cell cancer gene study result brain blood drug risk mouse human patient trial dose "
         "effect level rate model data").split()


def t5_tokenizer(folder):
    """A small T5 (Unigram) tokenizer: pad 0, eos 1, unk 2, then one piece per word; saved to `folder`."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0 - i * 0.01) for i, w in enumerate(WORDS)]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.save_pretrained(folder)
    return tok


def run_with_fake_curl(script: Path, dest: Path, tmp_path: Path, writes: str):
    """Run a download script with a stand-in `curl` on PATH: it appends each URL to
    tmp_path/urls.txt and runs the shell snippet `writes` (with $url, $out set)."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "urls.txt"
    fake = bin_dir / "curl"
    fake.write_text('#!/usr/bin/env bash\nout=""; url=""\nwhile [[ $# -gt 0 ]]; do\n'
                    '  case $1 in -o) out=$2; shift 2;; -C) shift 2;; --retry) shift 2;; -*) shift;;'
                    ' *) url=$1; shift;; esac\ndone\n'
                    f'echo "$url" >> {log}\n{writes}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(script), str(dest)], env=env, capture_output=True, text=True)
    urls = log.read_text().split() if log.is_file() else []
    return proc, urls

