"""Trie-constrained beam search for Hugging Face `generate`, vectorised over all beams.

`TrieConstrainedLogitsProcessor` keeps the trie on the logits' device and, at each
decoding step, finds every row's trie node and masks all rows with a few tensor
operations: no Python callback per beam, no per-beam transfer.

Tracking nodes across beam reordering: beam search hands the processor `input_ids`
(batch * beams, cur_len) whose rows it reorders between steps without saying which row
each new row came from. But every new row is an old row plus one token, and a node is a
function of the prefix alone. So the processor keeps last step's rows and their nodes;
for each new row a hash of its prefix (`input_ids[:, :-1]`) proposes an old row, an exact
comparison of all tokens confirms it, and the new node is that row's node stepped by the
last token. If any row has no confirmed match (first step, a new `generate` call, a
caller that is not beam search) every row is walked from the root instead. The hash only
proposes, so a hash collision costs time, never correctness.

What HF beam search (transformers 5) does with the masks: it keeps 2 * num_beams
candidates per query; when fewer continuations are allowed, the rest are -inf candidates
with arbitrary tokens. Those rows leave the trie (the dead node: all -inf; HF's own
PrefixConstrainedLogitsProcessor would raise on their empty allowed list), keep -inf
scores and never reach the output, where HF's placeholder rows score -1e9. Finished
beams leave the running rows, but when too few remain HF keeps some running at -1e9:
they sit at a leaf, which allows only the end token. Returned rows are padded after the
end token; leaves absorb that padding.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..errors import DDROError
from ..modeling.build import special_ids
from .decoding import DecodingArguments, generation_config, only_config
from .trie import DocidTrie, TrieTensors


def step_nodes(tt: TrieTensors, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Child of each node by each token; `tt.dead` off the trie; a leaf stays where it is."""
    key = nodes * tt.vocab + tokens
    edge = torch.searchsorted(tt.keys, key).clamp_(max=len(tt.keys) - 1)
    found = (tt.keys[edge] == key) & (tokens >= 0) & (tokens < tt.vocab)
    child = torch.where(found, edge + 1, tt.dead)    # edge e leads to node e + 1
    return torch.where(tt.leaf[nodes], nodes, child)


def walk(tt: TrieTensors, tokens: torch.Tensor) -> torch.Tensor:
    """Node reached by each row of `tokens` (rows, length), starting at the root."""
    nodes = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
    for column in tokens.T:
        nodes = step_nodes(tt, nodes, column)
    return nodes


def mask_scores(tt: TrieTensors, scores: torch.Tensor, nodes: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """The scores of the tokens allowed at each row's node, -inf elsewhere (in `scores` itself if inplace)."""
    lo = tt.offsets[nodes].long()
    count = tt.offsets[(nodes + 1).clamp_(max=tt.dead)].long() - lo   # 0 for the dead node
    leaf = tt.leaf[nodes]
    # a leaf allows only the end token: the token of its own incoming edge, node - 1
    lo, count = torch.where(leaf, nodes - 1, lo), torch.where(leaf, 1, count)
    j = torch.arange(int(count.max()), device=nodes.device)
    # (rows, widest fan-out) edge slots; surplus slots repeat the row's first edge
    slots = lo[:, None] + torch.where(j < count[:, None], j, 0)
    tokens = tt.keys[slots.clamp_(max=len(tt.keys) - 1)] % tt.vocab
    values = scores.gather(1, tokens).masked_fill_(count[:, None] == 0, -torch.inf)
    if tt.free_end:  # the trie's own end edge: certain once a docid is complete (see DocidTrie)
        values.masked_fill_((tokens == tt.end_token) & (values > -torch.inf), 0.0)
    out = scores.fill_(-torch.inf) if inplace else torch.full_like(scores, -torch.inf)
    return out.scatter_(1, tokens, values)


class TrieConstrainedLogitsProcessor(LogitsProcessor):
    """Allow only continuations of docids in `trie` (see the module docstring).

    prompt_len: decoder tokens before the docid (1: the decoder start token).
    num_beams: beams per query; rows are then matched within their query (needed by track_scores).
    track_scores: also follow each beam's summed log-probability (as returned by this
    processor) so that `finished_log_probs` gives finished docids' scores without
    `output_scores=True`.
    inplace: mask `scores` itself instead of a new tensor, saving an allocation of
    (rows, vocab) floats per step. Safe in beam search, which hands over a fresh tensor; not
    with greedy/sampling and `output_logits=True`, which keep the tensor they pass in.
    """

    def __init__(self, trie: DocidTrie, prompt_len: int = 1, num_beams: int | None = None,
                 track_scores: bool = False, inplace: bool = False):
        if track_scores and not num_beams:
            raise ValueError("track_scores needs num_beams")
        self.trie, self.prompt_len, self.num_beams = trie, prompt_len, num_beams
        self.track_scores, self.inplace = track_scores, inplace
        self.walks = 0            # steps that could not reuse last step's nodes (for tests)
        self._ids = None          # last step's input_ids, their nodes and sorted prefix hashes
        self._weights = torch.empty(0, dtype=torch.long)
        self._records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tt = self.trie.to_torch(scores.device)
        if scores.shape[-1] < tt.vocab:
            raise DDROError(f"docid token ids reach {tt.vocab - 1}, the model scores only "
                            f"{scores.shape[-1]} tokens")
        input_ids = input_ids.to(scores.device)
        parent = self._parents(input_ids)
        if parent is not None:
            nodes = step_nodes(tt, self._nodes[parent], input_ids[:, -1])
        else:
            self.walks += input_ids.shape[1] > self.prompt_len
            nodes = walk(tt, input_ids[:, self.prompt_len:])
        out = mask_scores(tt, scores, nodes, self.inplace)
        if self.track_scores:
            self._track(tt, input_ids, parent, nodes, out)
        self._remember(input_ids, nodes)
        return out

    def _hash(self, ids: torch.Tensor) -> torch.Tensor:
        if len(self._weights) < ids.shape[1] or self._weights.device != ids.device:
            gen = torch.Generator().manual_seed(42)
            n = max(2 * ids.shape[1], 64)
            self._weights = torch.randint(1, 2**24, (n,), generator=gen).to(ids.device)
        return (ids * self._weights[:ids.shape[1]]).sum(1)   # < 2**63 for token ids < 2**30

    def _groups(self, rows: int) -> int:
        """Rows are matched within groups of num_beams (one query's beams) when given."""
        return rows // self.num_beams if self.num_beams and rows % self.num_beams == 0 else 1

    def _parents(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """For each row, the old row (of the same query) equal to its prefix; None unless every row has one."""
        old = self._ids
        rows, length = input_ids.shape
        if old is None or length <= self.prompt_len or old.shape != (rows, length - 1) \
                or old.device != input_ids.device:
            return None
        prefix = input_ids[:, :-1]
        groups = self._groups(rows)
        want = self._hash(prefix).view(groups, -1)
        pos = torch.searchsorted(self._sorted_hash, want).clamp_(max=want.shape[1] - 1)
        parent = self._hash_order.gather(1, pos).view(-1)
        return parent if bool((old[parent] == prefix).all()) else None

    def _remember(self, input_ids: torch.Tensor, nodes: torch.Tensor) -> None:
        self._ids, self._nodes = input_ids.clone(), nodes
        groups = self._groups(len(input_ids))
        self._sorted_hash, order = self._hash(input_ids).view(groups, -1).sort(dim=1)
        offset = torch.arange(0, len(input_ids), order.shape[1], device=order.device)
        self._hash_order = order + offset[:, None]         # row numbers

    def _track(self, tt, input_ids, parent, nodes, out) -> None:
        """Sum of log-probs per row; record, per (query, node), the score of ending at that node."""
        rows = len(input_ids)
        if input_ids.shape[1] <= self.prompt_len:
            self._records.clear()
            cum = torch.zeros(rows, device=out.device)
        elif parent is not None:
            cum = self._cum[parent] + self._prev_out[parent, input_ids[:, -1]]
        else:
            cum = torch.full((rows,), torch.nan, device=out.device)
        query = torch.arange(rows, device=out.device) // self.num_beams
        self._records.append((query * (tt.dead + 1) + nodes, cum + out[:, tt.end_token]))
        self._cum, self._prev_out = cum, out

    def finished_log_probs(self, queries: torch.Tensor, leaves: torch.Tensor) -> torch.Tensor:
        """Summed log-prob (end token included) of the beam of each query that ended at each leaf."""
        tt = self.trie.to_torch(leaves.device)
        # the node before a leaf's end edge (leaf - 1) is the one whose edge range holds it
        before = torch.searchsorted(tt.offsets, (leaves - 1).to(tt.offsets.dtype), right=True) - 1
        keys, values = (torch.cat(x) for x in zip(*self._records))
        keys, order = keys.sort()
        want = queries * (tt.dead + 1) + before
        pos = torch.searchsorted(keys, want).clamp_(max=len(keys) - 1)
        return torch.where(keys[pos] == want, values[order[pos]], torch.nan)


class Beam(NamedTuple):
    docid: tuple[int, ...]
    score: float


def constrained_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                         trie: DocidTrie, num_beams: int | None = None, num_return_sequences: int | None = None,
                         decoder_start_token_id: int | None = None,
                         decoding: DecodingArguments | None = None) -> list[list[Beam]]:
    """Beam search over the docids in `trie`: per query, distinct docids with their scores, best first.

    Scores follow `decoding.ranking` (default: the exact summed log-prob of the docid's tokens,
    see ddro.eval.decoding); `num_beams` overrides `decoding.beams`. Every generation setting
    is passed explicitly (`generation_config`), none is read from the model's. Fewer than
    `num_return_sequences` when the trie holds fewer docids."""
    decoding = decoding or DecodingArguments()
    if num_beams is not None:
        decoding = replace(decoding, beams=num_beams)
    beams = decoding.beams
    nrs = num_return_sequences or beams
    processor = TrieConstrainedLogitsProcessor(trie, prompt_len=1, num_beams=beams, track_scores=True,
                                              inplace=True)
    ids = special_ids(model)   # the model's special ids, its only settings used here
    start = ids["decoder_start"] if decoder_start_token_id is None else decoder_start_token_id
    config = generation_config(decoding, trie, nrs, trie.end_token if ids["pad"] is None else ids["pad"], start)
    with torch.no_grad(), only_config(model, config):
        seqs = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                              logits_processor=LogitsProcessorList([processor]))
    tt = trie.to_torch(seqs.device)
    generated = seqs[:, 1:]
    leaves = walk(tt, generated)
    length = (generated == trie.end_token).int().argmax(1) + 1          # tokens up to the first end
    query = torch.arange(len(seqs), device=seqs.device) // nrs
    log_probs = processor.finished_log_probs(query, leaves).tolist()
    scores = [lp / n ** decoding.exponent for lp, n in zip(log_probs, length.tolist())]
    is_leaf = tt.leaf[leaves].tolist()
    leaves = leaves.cpu().numpy()
    # rows that end off a leaf (placeholders, or cut by max_length) are looked up as any leaf, then skipped
    docid_index = trie.docid_index(np.where(is_leaf, leaves, trie.leaf_nodes[0]))
    results: list[list[Beam]] = []
    for q in range(len(seqs) // nrs):
        beams_found, seen = [], set()
        for i in range(q * nrs, (q + 1) * nrs):
            # HF pads with placeholder rows (not leaves) and may return a docid twice
            if is_leaf[i] and leaves[i] not in seen:
                seen.add(leaves[i])
                beams_found.append(Beam(tuple(map(int, trie.docids[docid_index[i]])), scores[i]))
        # stable: equal scores keep HF's order
        results.append(sorted(beams_found, key=lambda b: -b.score))
    return results


# The reference approach, slow: a nested-dict trie read by `prefix_allowed_tokens_fn`
# (one Python call per beam per step). For parity tests and benchmarks.

def nested_dict_trie(docids: Sequence[Sequence[int]], end_token: int) -> dict:
    root: dict = {}
    for docid in docids:
        node = root
        for token in (docid if docid[-1] == end_token else [*docid, end_token]):
            node = node.setdefault(token, {})
    return root


def dict_trie_allowed_fn(root: dict, end_token: int, prompt_len: int = 1):
    """A `prefix_allowed_tokens_fn` with the same rules as `DocidTrie`."""
    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        for token in sent[prompt_len:].tolist():
            if not node:          # a leaf absorbs later tokens
                break
            node = node.get(token)
            if node is None:      # off the trie: only beams HF filled in at -inf get here
                return [end_token]
        return list(node) or [end_token]
    return allowed
