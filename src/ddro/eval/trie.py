"""The set of valid docids as a prefix tree (trie), stored in flat numpy arrays.

Every docid is a path from the root followed by an *end* edge (the end token: eos or pad),
so a decoder can only stop after a complete docid. At the node a complete docid reaches,
the end token is allowed, next to the continuations when that docid is also a prefix of a
longer one. The end edge leads to a *leaf*; during decoding a leaf absorbs any later
token (padding after eos) and allows only the end token, so finished beams stay valid.
A docid that already ends with the end token (TU docids end with eos) gets no second one.
When no docid carries the end token (PQ, atomic), the model was never trained to emit it,
so the trie is marked `free_end`: taking the end edge then scores log 1 = 0 instead of
the untrained end token's log-probability, which would add noise to every beam's score.

Layout: nodes are numbered depth by depth, in lexicographic order of their prefixes, so
that edge e leads to node e + 1 (node 0 is the root)::

    tokens[e]                          token of edge e
    tokens[offsets[n]:offsets[n + 1]]  the sorted child tokens of node n,
                                       whose child nodes are offsets[n] + 1 ... offsets[n + 1]

With this numbering the edge keys `parent * vocab + token` increase strictly, so on the
device a child lookup is one binary search for the whole batch (`TrieTensors`).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np
import torch

from ..errors import DDROError


class DocidTrie:
    """>>> trie = DocidTrie([(5, 6), (5, 6, 7), (9,)], end_token=1)
    >>> trie.allowed([5, 6])          # docid (5, 6) may end here or go on to (5, 6, 7)
    [1, 7]
    """

    def __init__(self, docids: Sequence[Sequence[int]] | np.ndarray, end_token: int):
        """docids: token-id sequences (tuples, or one row per docid of a 2-d array); repeats are fine."""
        self.docids = docids
        self.end_token = int(end_token)
        paths, self.free_end = _padded_paths(docids, self.end_token)
        self.vocab = int(max(paths.max(), self.end_token)) + 1
        self.max_depth = paths.shape[1]             # longest path, end edge included
        self.offsets, self.tokens, leaves, first = _build(paths)
        order = np.argsort(leaves)
        self.leaf_nodes, self.leaf_docid = leaves[order], first[order]   # sorted leaves -> index in docids
        self._tensors: dict[torch.device, TrieTensors] = {}

    def __len__(self) -> int:
        """Number of distinct docids."""
        return len(self.leaf_nodes)

    @property
    def num_nodes(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.offsets, self.tokens, self.leaf_nodes, self.leaf_docid))

    def is_leaf(self, node: int) -> bool:
        """Whether `node` was reached by an end edge (a complete docid)."""
        return node > 0 and self.tokens[node - 1] == self.end_token

    def child(self, node: int, token: int) -> int | None:
        lo, hi = self.offsets[node], self.offsets[node + 1]
        i = lo + np.searchsorted(self.tokens[lo:hi], token)
        return int(i) + 1 if i < hi and self.tokens[i] == token else None

    def node(self, prefix: Sequence[int]) -> int | None:
        """The node `prefix` leads to when decoding (leaves absorb later tokens), None off the trie."""
        node = 0
        for token in prefix:
            if not self.is_leaf(node):
                node = self.child(node, token)
                if node is None:
                    return None
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens the decoder may emit after `prefix` (docid tokens so far, no decoder start)."""
        node = self.node(prefix)
        if node is None:
            return []
        if self.is_leaf(node):
            return [self.end_token]
        return self.tokens[self.offsets[node]:self.offsets[node + 1]].tolist()

    def contains(self, docid: Sequence[int]) -> bool:
        path = list(docid) if docid and docid[-1] == self.end_token else [*docid, self.end_token]
        if self.end_token in path[:-1]:
            return False
        node = self.node(path)
        return node is not None and self.is_leaf(node)

    def docid_index(self, leaf):
        """Index in `docids` of the first docid that ends at `leaf` (an int or an array of them)."""
        return self.leaf_docid[np.searchsorted(self.leaf_nodes, leaf)]

    def to_torch(self, device: torch.device | str = "cpu") -> "TrieTensors":
        """The trie as tensors on `device` (built once per device)."""
        device = torch.device(device)
        if device not in self._tensors:
            # parent * vocab per edge, without temporaries: + vocab at each node's first edge, summed
            keys = np.zeros(len(self.tokens) + 1, np.int64)
            np.add.at(keys, self.offsets[1:-1], self.vocab)
            keys = np.cumsum(keys, out=keys)[:-1]
            keys += self.tokens
            leaf = np.zeros(self.num_nodes + 1, bool)
            leaf[1:self.num_nodes] = self.tokens == self.end_token
            self._tensors[device] = TrieTensors(
                offsets=torch.from_numpy(self.offsets).to(device),
                keys=torch.from_numpy(keys).to(device),
                leaf=torch.from_numpy(leaf).to(device), vocab=self.vocab, end_token=self.end_token,
                free_end=self.free_end)
        return self._tensors[device]


@dataclass(frozen=True)
class TrieTensors:
    """The trie on a device. Node `dead` (= num_nodes) stands for every prefix off the trie:
    it has no children (offsets[dead] = num_edges) and no leaf flag."""
    offsets: torch.Tensor   # (num_nodes + 1,) int32, shared with the numpy array on the CPU
    keys: torch.Tensor      # (num_edges,) int64: parent * vocab + token, strictly increasing
    leaf: torch.Tensor      # (num_nodes + 1,) bool
    vocab: int
    end_token: int
    free_end: bool = False  # the end edge is the trie's own (no docid carries it): it scores 0

    @property
    def dead(self) -> int:
        return len(self.leaf) - 1

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (self.offsets, self.keys, self.leaf))


def _padded_paths(docids, end: int) -> tuple[np.ndarray, bool]:
    """(n, longest path) int32 matrix: each docid + end token, padded with -1; and whether
    every end token was added here (no docid carried its own)."""
    try:
        if isinstance(docids, np.ndarray) and docids.ndim == 2:
            if docids.size and docids.max() >= 2**31:
                raise OverflowError(int(docids.max()))
            lengths = np.full(len(docids), docids.shape[1], np.int64)
            flat = docids.astype(np.int32).reshape(-1)
        else:
            lengths = np.fromiter(map(len, docids), np.int64, len(docids))
            flat = np.fromiter(chain.from_iterable(docids), np.int32, int(lengths.sum()))
    except (OverflowError, TypeError) as e:
        raise DDROError(f"docid token ids must be integers below 2**31 ({e})") from None
    if len(lengths) == 0 or lengths.min() == 0 or flat.min() < 0:
        raise DDROError("a docid trie needs at least one docid, no empty docid and no negative token id")
    last = np.cumsum(lengths) - 1
    has_end = flat[last] == end
    if np.count_nonzero(flat == end) != np.count_nonzero(has_end):
        raise DDROError(f"end token {end} appears inside a docid")
    paths = np.full((len(lengths), int((lengths + ~has_end).max())), -1, np.int32)
    paths[np.arange(paths.shape[1]) < lengths[:, None]] = flat          # row-major fill
    paths[np.flatnonzero(~has_end), lengths[~has_end]] = end
    return paths, not has_end.any()


def _lexicographic_order(paths: np.ndarray) -> np.ndarray:
    """Stable lexicographic row order. np.lexsort on every column is slow (one sort per
    column), so consecutive columns are first packed into int64 words, each column
    shifted to start at 0 and given the bits its value range needs (PQ: 9 bits, 7 a word)."""
    words, word, used = [], np.zeros(len(paths), np.int64), 0
    for column in paths.T:
        low = int(column.min())
        bits = max(1, int(column.max()) - low).bit_length()
        if used + bits > 63:
            words.append(word)
            word, used = np.zeros(len(paths), np.int64), 0
        word = (word << bits) | (column.astype(np.int64) - low)
        used += bits
    words.append(word)
    return np.lexsort(words[::-1])                    # stable: repeats keep input order


def _build(paths: np.ndarray):
    """CSR arrays from padded paths: (offsets, tokens, leaf node per distinct path, its first row)."""
    order = _lexicographic_order(paths)
    paths = paths[order]
    differs = paths[1:] != paths[:-1]
    keep = np.concatenate([[True], differs.any(1)])   # drop repeated docids (collisions)
    # first column where a path leaves its predecessor: it starts new nodes from there on
    first_new = np.concatenate([[0], differs.argmax(1)])[keep]
    del differs
    paths, order = paths[keep], order[keep]
    path_len = (paths >= 0).sum(1)
    new = (paths >= 0) & (first_new[:, None] <= np.arange(paths.shape[1]))   # (row, depth) starts a node
    depth_sizes = new.sum(0)
    num_nodes = 1 + int(depth_sizes.sum())
    if num_nodes >= 2**31:
        raise DDROError(f"docid trie too large ({num_nodes:,} nodes)")

    tokens = np.empty(num_nodes - 1, np.int32)
    offsets = np.zeros(num_nodes + 1, np.int32)       # child counts in offsets[1:], summed below
    node_of_prefix = np.zeros(len(paths), np.int64)   # node of paths[i, :d] (the root at d = 0)
    leaves = np.zeros(len(paths), np.int32)
    depth_start, depth_size = 0, 1                    # the ids of the nodes at depth d
    for d, size in enumerate(depth_sizes):
        # nodes at depth d + 1, in row order: edges depth_start + depth_size - 1 ...
        first_edge = depth_start + depth_size - 1
        tokens[first_edge:first_edge + size] = paths[new[:, d], d]
        offsets[1 + depth_start:1 + depth_start + depth_size] = np.bincount(
            node_of_prefix[new[:, d]] - depth_start, minlength=depth_size)
        depth_start, depth_size = depth_start + depth_size, int(size)
        # rows that start no node share the node of the last row that did (rows are sorted)
        node_of_prefix = depth_start - 1 + np.cumsum(new[:, d])
        ends_here = path_len == d + 1
        leaves[ends_here] = node_of_prefix[ends_here]
    np.cumsum(offsets, out=offsets)
    return offsets, tokens, leaves, order
