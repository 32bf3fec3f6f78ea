import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList, T5Config, T5ForConditionalGeneration

from ddro.errors import DDROError
from ddro.eval.constrained import (
    TrieConstrainedLogitsProcessor,
    constrained_generate,
    dict_trie_allowed_fn,
    mask_scores,
    nested_dict_trie,
    walk,
)
from ddro.eval.decoding import STOPPING, DecodingArguments
from ddro.eval.trie import DocidTrie

START, END, VOCAB = 0, 1, 300     # T5: decoder start = pad = 0, eos = 1


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, num_heads=2, d_ff=64, num_layers=2,
                      num_decoder_layers=2, decoder_start_token_id=START, pad_token_id=START, eos_token_id=END)
    return T5ForConditionalGeneration(config).eval()


def random_docids(rng, n, max_len=6, codes=8):
    """Docids over few codes (shared prefixes, repeats, docids that prefix others), ids 2..2+codes."""
    return [tuple(rng.integers(2, 2 + codes, rng.integers(1, max_len + 1)).tolist()) for _ in range(n)]


def queries(n, seed=0):
    return torch.randint(2, VOCAB, (n, 9), generator=torch.Generator().manual_seed(seed))


def test_walk_matches_the_python_trie():
    rng = np.random.default_rng(0)
    docids = random_docids(rng, 50)
    trie = DocidTrie(docids, END)
    prefixes = [d[:i] for d in docids for i in range(len(d) + 1)] + [(*d, END, START, END) for d in docids]
    prefixes += [tuple(rng.integers(0, 12, rng.integers(0, 8)).tolist()) for _ in range(300)]
    for prefix in prefixes:
        node = walk(trie.to_torch(), torch.tensor([prefix], dtype=torch.long).view(1, -1)).item()
        want = trie.node(prefix)
        assert node == (trie.num_nodes if want is None else want), prefix     # num_nodes: off the trie


def test_mask_keeps_exactly_the_allowed_scores():
    rng = np.random.default_rng(1)
    docids = random_docids(rng, 30)
    trie = DocidTrie(docids, END)
    prefixes = [d[:i] for d in docids[:10] for i in range(len(d) + 1)] + [(*docids[0], END, END), (99,)]
    nodes = torch.tensor([trie.node(p) if trie.node(p) is not None else trie.num_nodes for p in prefixes])
    scores = torch.randn(len(prefixes), 20)
    for inplace in (False, True):
        out = mask_scores(trie.to_torch(), scores.clone(), nodes, inplace)
        for row, prefix in zip(out, prefixes):
            allowed = trie.allowed(prefix)
            finite = torch.isfinite(row).nonzero().view(-1).tolist()
            assert finite == allowed, prefix
    assert (out[-1] == -torch.inf).all()                         # off the trie: nothing allowed


def test_processor_follows_reordered_beams_without_walking():
    rng = np.random.default_rng(2)
    docids = [tuple(r) for r in (20 + rng.integers(0, 4, (40, 5))).tolist()]
    trie = DocidTrie(docids, END)
    beams, batch = 6, 3
    rows = [docids[i] for i in rng.integers(0, len(docids), beams * batch)]
    processor = TrieConstrainedLogitsProcessor(trie, num_beams=beams)
    for t in range(6):
        # beam search shuffles each query's rows between steps
        order = np.concatenate([b * beams + rng.permutation(beams) for b in range(batch)])
        rows = [rows[i] for i in order]
        ids = torch.tensor([[START, *r[:t]] for r in rows])
        out = processor(ids, torch.zeros(len(rows), 30))
        for row, r in zip(out, rows):
            assert torch.isfinite(row).nonzero().view(-1).tolist() == trie.allowed(r[:t])
    assert processor.walks == 0
    # rows that do not extend the last step's rows: walked from the root, still right
    ids = torch.tensor([[START, *docids[0][:2]]] * len(rows))
    out = processor(ids, torch.zeros(len(rows), 30))
    assert processor.walks == 1
    assert torch.isfinite(out[0]).nonzero().view(-1).tolist() == trie.allowed(docids[0][:2])


@pytest.mark.parametrize("beams,decoding", [
    (4, DecodingArguments()), (10, DecodingArguments()),
    (10, DecodingArguments(ranking="length_normalised", early_stopping="false")),   # HF's defaults
    (4, DecodingArguments(ranking="length_normalised", length_penalty=0.5, early_stopping="never"))])
def test_same_beams_as_the_reference_approach(model, beams, decoding):
    """Docids that carry their own end token (TU): the end is scored by the model, as in the reference."""
    rng = np.random.default_rng(beams)
    docids = [(*d, END) for d in random_docids(rng, 50)]
    trie = DocidTrie(docids, END)
    assert not trie.free_end
    ids = queries(3)
    common = dict(input_ids=ids, num_beams=beams, num_return_sequences=beams, max_new_tokens=trie.max_depth,
                  eos_token_id=END, do_sample=False, return_dict_in_generate=True, output_scores=True,
                  length_penalty=decoding.exponent, early_stopping=STOPPING[decoding.early_stopping])
    processor = TrieConstrainedLogitsProcessor(trie, num_beams=beams)
    ours = model.generate(**common, logits_processor=LogitsProcessorList([processor]))
    ref = model.generate(**common, prefix_allowed_tokens_fn=dict_trie_allowed_fn(nested_dict_trie(docids, END), END))
    assert torch.equal(ours.sequences, ref.sequences)
    torch.testing.assert_close(ours.sequences_scores, ref.sequences_scores, atol=1e-5, rtol=0)
    assert processor.walks == 0

    # the helper: the reference's beams as docids, repeats dropped, with the same scores
    results = constrained_generate(model, ids, None, trie, beams, decoding=decoding)
    for q, beams_found in enumerate(results):
        want, seen = [], set()
        for seq, score in zip(ref.sequences[q * beams:(q + 1) * beams], ref.sequences_scores[q * beams:]):
            docid = tuple(seq[1:seq[1:].tolist().index(END) + 2].tolist()) if END in seq[1:] else None
            if docid in trie.docids and docid not in seen:
                seen.add(docid)
                want.append((docid, score.item()))
        assert [b.docid for b in beams_found] == [d for d, _ in want]
        np.testing.assert_allclose([b.score for b in beams_found], [s for _, s in want], atol=1e-5, rtol=0)


def test_trie_added_end_costs_nothing(model):
    """PQ-style docids (fixed length, no end token): a beam's score is the summed log-probability of
    its docid tokens alone; the end token, which such a model is never trained on, adds nothing."""
    rng = np.random.default_rng(7)
    docids = sorted({tuple(r) for r in (2 + rng.integers(0, 6, (60, 3))).tolist()})
    trie = DocidTrie(docids, END)
    assert trie.free_end
    ids = queries(2, seed=3)
    results = constrained_generate(model, ids, None, trie, num_beams=8)
    for q, found in enumerate(results):
        labels = torch.tensor([b.docid for b in found])
        with torch.no_grad():
            logits = model(input_ids=ids[q:q + 1].expand(len(found), -1), labels=labels).logits
        token_log_probs = logits.log_softmax(-1).gather(2, labels[..., None]).squeeze(-1).sum(1)
        np.testing.assert_allclose([b.score for b in found], token_log_probs.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_every_beam_is_a_docid(model, seed):
    rng = np.random.default_rng(100 + seed)
    n = [1, 2, 5, 40, 80, 120][seed]                       # also fewer docids than beams
    docids = random_docids(rng, n, max_len=int(rng.integers(1, 7)), codes=int(rng.integers(2, 12)))
    docids += [docids[0], (*docids[0], 5)]                 # a collision and a docid that extends another
    trie = DocidTrie(docids, END)
    beams = int(rng.integers(2, 13))
    results = constrained_generate(model, queries(2, seed), torch.ones(2, 9, dtype=torch.long), trie, beams,
                                   num_return_sequences=min(beams, 5))
    for found in results:
        assert found, "at least one docid per query"
        assert len(found) <= min(beams, 5, len(trie))
        assert all(b.docid in docids for b in found)
        assert len({b.docid for b in found}) == len(found)
        scores = [b.score for b in found]
        assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()
    # the raw beams: every row is a docid, its end token, then padding
    processor = TrieConstrainedLogitsProcessor(trie, num_beams=beams)
    out = model.generate(input_ids=queries(2, seed), num_beams=beams, num_return_sequences=beams,
                         max_new_tokens=trie.max_depth, eos_token_id=END, return_dict_in_generate=True,
                         output_scores=True, logits_processor=LogitsProcessorList([processor]))
    for seq, score in zip(out.sequences.tolist(), out.sequences_scores.tolist()):
        if score > -1e9:                                   # HF's placeholder rows score -1e9
            body = seq[1:seq.index(END, 1)]
            assert tuple(body) in docids and all(t in (START, END) for t in seq[len(body) + 2:])


def test_docid_tokens_beyond_the_model_vocabulary_are_refused(model):
    trie = DocidTrie([(VOCAB + 5,)], END)
    with pytest.raises(DDROError, match="vocab|scores only"):
        constrained_generate(model, queries(1), None, trie, 2)


def test_one_docid_and_more_beams(model):
    """Placeholder rows that end off the trie's leaves are skipped, whatever their node number."""
    trie = DocidTrie([(2,)], END)
    for decoding in (DecodingArguments(beams=2), DecodingArguments(beams=3, early_stopping="false")):
        results = constrained_generate(model, queries(2), None, trie, decoding=decoding)
        assert [[b.docid for b in found] for found in results] == [[(2,)], [(2,)]]
