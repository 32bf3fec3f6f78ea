"""BM25 retrieval: the baseline (`ddro bm25`) and the index used for hard-negative mining."""
from .backends import BACKENDS, BM25Index, build_index, doc_text
from .cli import BM25Arguments, main, run

__all__ = ["BACKENDS", "BM25Arguments", "BM25Index", "build_index", "doc_text", "main", "run"]
