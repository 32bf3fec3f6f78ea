"""Docids: the identifiers the model learns to write (`ddro docids`).

`build` is the stage; `pq`, `tu` and `atomic` are the three encodings; `embed` computes
(and caches) the document embeddings PQ quantizes; `table` reads and checks the result.
"""
