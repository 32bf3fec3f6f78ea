import numpy as np
import pytest

from ddro.errors import DDROError
from ddro.eval.trie import DocidTrie

END = 1


def brute_allowed(docids, prefix):
    """What may follow `prefix`, straight from the definition (paths = docid + end)."""
    paths = [tuple(d) if d[-1] == END else (*d, END) for d in docids]
    for path in paths:                           # after a complete path only the end token
        if len(prefix) >= len(path) and tuple(prefix[:len(path)]) == path:
            return [END]
    return sorted({p[len(prefix)] for p in paths if len(p) > len(prefix) and p[:len(prefix)] == tuple(prefix)})


def random_docids(rng, n, max_len=5, codes=6):
    """Short docids over few codes: many shared prefixes, repeats, and docids that prefix others."""
    return [tuple(rng.integers(2, 2 + codes, rng.integers(1, max_len + 1)).tolist()) for _ in range(n)]


def test_small_table_by_hand():
    docids = [(5, 6), (5, 6, 7), (5, 8), (9,), (5, 6)]
    trie = DocidTrie(docids, END)
    assert len(trie) == 4                                        # (5, 6) twice: one path
    assert trie.allowed([]) == [5, 9]
    assert trie.allowed([5]) == [6, 8]
    assert trie.allowed([5, 6]) == [END, 7]                      # complete docid and prefix of another
    assert trie.allowed([5, 6, END]) == [END]                    # finished: only the end token
    assert trie.allowed([5, 6, END, 0, END]) == [END]            # padding after the end stays valid
    assert trie.allowed([5, 7]) == [] and trie.node([5, 7]) is None
    assert trie.contains((5, 6)) and trie.contains((5, 6, 7)) and trie.contains((9,))
    assert not trie.contains((5,)) and not trie.contains((5, 6, 7, 8)) and not trie.contains((5, 6, END, END))
    assert trie.max_depth == 4
    leaf = trie.node([5, 6, END])
    assert trie.is_leaf(leaf) and not trie.is_leaf(trie.node([5, 6]))
    assert trie.docid_index(leaf) == 0                           # first of the colliding documents
    assert trie.docid_index(trie.node([9, END])) == 3


def test_docids_that_end_with_the_end_token_get_no_second_one():
    trie = DocidTrie([(3, 4, END), (3, END)], END)
    assert trie.allowed([3]) == [END, 4]
    assert trie.allowed([3, 4]) == [END]
    assert trie.contains((3, 4, END)) and trie.contains((3, END))
    assert trie.max_depth == 3


@pytest.mark.parametrize("docids", [[], [()], [(2, END, 3)], [(2, -1)]])
def test_bad_docids_are_refused(docids):
    with pytest.raises(DDROError):
        DocidTrie(docids, END)


@pytest.mark.parametrize("seed", range(5))
def test_allowed_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    docids = random_docids(rng, int(rng.integers(1, 60)))
    trie = DocidTrie(docids, END)
    prefixes = {d[:i] for d in docids for i in range(len(d) + 1)}
    prefixes |= {tuple(rng.integers(0, 9, rng.integers(0, 7)).tolist()) for _ in range(200)}
    for prefix in prefixes:
        assert trie.allowed(prefix) == brute_allowed(docids, prefix), prefix
    assert all(trie.contains(d) for d in docids)
    assert len(trie) == len(set(docids))
    # one node per distinct prefix of a path (the empty prefix is the root)
    paths = {(*d, END) for d in docids}
    assert trie.num_nodes == len({p[:i] for p in paths for i in range(len(p) + 1)})
    for i in range(len(docids)):                                 # leaf -> first document with that docid
        assert trie.docid_index(trie.node((*docids[i], END))) == docids.index(docids[i])


def test_layout_edge_e_leads_to_node_e_plus_1():
    rng = np.random.default_rng(7)
    trie = DocidTrie(random_docids(rng, 40), END)
    assert len(trie.tokens) == trie.num_nodes - 1
    keys = np.repeat(np.arange(trie.num_nodes), np.diff(trie.offsets)) * trie.vocab + trie.tokens
    assert np.all(np.diff(keys) > 0)                             # what the device lookup relies on
    for node in range(trie.num_nodes):
        for e in range(trie.offsets[node], trie.offsets[node + 1]):
            assert trie.child(node, int(trie.tokens[e])) == e + 1


def test_matrix_and_list_inputs_build_the_same_trie():
    rng = np.random.default_rng(3)
    matrix = 100 + 16 * np.arange(6) + rng.integers(0, 16, (5000, 6))
    a, b = DocidTrie(matrix, END), DocidTrie([tuple(r) for r in matrix.tolist()], END)
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.tokens, b.tokens)
    assert np.array_equal(a.leaf_docid, b.leaf_docid)
    # PQ-like: every distinct prefix of every length is one node
    distinct = sum(len(np.unique(matrix[:, :d], axis=0)) for d in range(1, 7))
    assert a.num_nodes == 1 + distinct + len(np.unique(matrix, axis=0))


def test_device_view():
    trie = DocidTrie([(5, 6), (5, 8), (9,), (5, 6, 7)], END)
    tt = trie.to_torch("cpu")
    assert tt.dead == trie.num_nodes and tt.vocab == 10
    edges = [(n, t) for n in range(trie.num_nodes) for t in trie.tokens[trie.offsets[n]:trie.offsets[n + 1]]]
    assert tt.keys.tolist() == [n * 10 + t for n, t in edges]
    assert tt.leaf.tolist() == [trie.is_leaf(n) for n in range(trie.num_nodes)] + [False]
    assert trie.to_torch("cpu") is tt                            # built once per device
