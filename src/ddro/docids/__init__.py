"""Docids: the identifiers the model learns to write (`ddro docids`).

`build` is the stage; `scheme` the interface every encoding implements and `schemes` their
registry: `pq`, `tu`, `atomic`, `semantic` and `rq`, one module each; `embed` computes (and
caches) the document embeddings pq, semantic and rq quantize (`kmeans` their clustering);
`table` reads and checks the result.
"""
