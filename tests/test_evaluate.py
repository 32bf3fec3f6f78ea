"""Beams -> ranked documents: collisions expanded in collection order, scores strictly decreasing."""
from ddro.docids.table import DocidTable
from ddro.eval.constrained import Beam
from ddro.eval.evaluate import rank_documents
from ddro.eval.trie import DocidTrie


def test_colliding_docids_expand_in_collection_order_with_decreasing_scores():
    # d2 and d0 share a docid; collection order is d0, d1, d2, d3
    table = DocidTable(["d0", "d1", "d2", "d3"], [(5, 6), (5, 7), (5, 6), (8, 1)])
    hits = rank_documents([Beam((5, 6), -0.5), Beam((5, 7), -0.5), Beam((8, 1), -2.0)], table)
    assert [d for d, _ in hits] == ["d0", "d2", "d1", "d3"]
    scores = [s for _, s in hits]
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert scores[0] == -0.5 and scores[-1] == -2.0


def test_docids_ending_with_the_end_token_stay_in_the_trie_as_given():
    trie = DocidTrie([(5, 6, 1), (5, 1)], end_token=1)  # TU docids end with EOS
    assert trie.contains((5, 6, 1)) and trie.contains((5, 1))
    assert trie.allowed([5]) == [1, 6]
