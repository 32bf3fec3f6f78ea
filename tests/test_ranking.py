"""Exact ranking on the production path (`generate_run` / `constrained_generate` with a built
minilm-decoder model) over docids of MIXED lengths, against an independent teacher-forced oracle:
a docid's score is the sum of its tokens' log-probabilities, no length normalisation."""
import numpy as np
import pytest
import torch

from ddro.eval.constrained import constrained_generate
from ddro.eval.decoding import DecodingArguments
from ddro.eval.evaluate import docid_trie, generate_run
from ddro.eval.rescore import docid_log_probs, inversions
from ddro.modeling.build import OWN_VOCAB, build_model
from model_fixtures import docid_folder, small_args, tiny_bert_encoder

EOS = OWN_VOCAB["eos"]
# dedup PQ (M = 2): colliding codes get one extra token, and a docid may prefix another
PQ = [(3, 7), (3, 8), (4, 7), (4, 7, 3), (4, 7, 4), (5, 9), (5, 10, 6), (6, 8), (6, 10), (6, 10, 9)]
# TU: any length, each ending in EOS (scored by the model)
TU = [(3, EOS), (3, 4, EOS), (4, 5, 6, EOS), (5, EOS), (5, 3, 8, 9, EOS), (6, 7, EOS), (8, 3, EOS)]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    tiny_bert_encoder(path)
    return path


def setup(bert, folder, tokens, encoding):
    table = docid_folder(folder, [f"d{i}" for i in range(len(tokens))], encoding=encoding, tokens=tokens)
    model = build_model(small_args("minilm-decoder", bert), table).model.eval()
    return model, table


def oracle(model, query: list[int], docid: tuple[int, ...]) -> float:
    """Teacher forcing, one docid at a time, decoder inputs built by hand: the sum of the
    log-softmax at each docid token. A docid without the end token ends for free (the trie's
    `free_end`: none of these tables mixes the two kinds)."""
    start = model.config.decoder_start_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([query]), decoder_input_ids=torch.tensor([[start, *docid[:-1]]])).logits
    log_probs = torch.log_softmax(logits[0].double(), -1)
    return float(sum(log_probs[i, t] for i, t in enumerate(docid)))


QUERIES = [[int(t) for t in np.random.default_rng(s).integers(1000, 3000, 7)] for s in range(3)]


@pytest.mark.parametrize("kind", ["pq", "tu"])
def test_every_docid_ranked_by_its_summed_log_prob(bert, tmp_path, kind):
    tokens = PQ if kind == "pq" else TU
    model, table = setup(bert, tmp_path / kind, tokens, kind)
    assert docid_trie(model, table).free_end == (kind == "pq")
    decoding = DecodingArguments(beams=len(tokens))
    for query in QUERIES:
        sums = {d: oracle(model, query, d) for d in tokens}
        want = sorted(tokens, key=lambda d: -sums[d])
        found = constrained_generate(model, torch.tensor([query]), None, docid_trie(model, table), decoding=decoding)[0]
        assert [b.docid for b in found] == want
        np.testing.assert_allclose([b.score for b in found], [sums[d] for d in want], atol=1e-4, rtol=0)
        # the teacher-forced re-scoring tool agrees with the oracle
        np.testing.assert_allclose(docid_log_probs(model, query, want, docid_trie(model, table)),
                                   [sums[d] for d in want], atol=1e-4, rtol=0)
    # generate_run (documents, as written to run.trec) keeps that order
    queries = [{"query_id": f"q{i}", "input_ids": q, "relevant": {"d0": 1}} for i, q in enumerate(QUERIES)]
    run = generate_run(model, 0, queries, table, decoding, batch_size=2, device=torch.device("cpu"))
    for q in queries:
        docids = [table.by_doc[d] for d, _ in run[q["query_id"]]]
        assert docids == sorted(tokens, key=lambda d: -oracle(model, q["input_ids"], d))


@pytest.mark.parametrize("kind,beams", [("pq", 3), ("pq", 5), ("tu", 2), ("tu", 4)])
def test_fewer_beams_never_contradict_the_sums(bert, tmp_path, kind, beams):
    tokens = PQ if kind == "pq" else TU
    model, table = setup(bert, tmp_path / kind, tokens, kind)
    ids = torch.tensor(QUERIES)
    results = constrained_generate(model, ids, torch.ones_like(ids), docid_trie(model, table), beams)
    for query, found in zip(QUERIES, results):
        assert 1 <= len(found) <= beams
        sums = [oracle(model, query, b.docid) for b in found]
        np.testing.assert_allclose([b.score for b in found], sums, atol=1e-4, rtol=0)
        assert inversions(sums) <= 1e-4


def test_search_does_not_stop_before_a_longer_better_docid(bert, tmp_path):
    """Beams 2. Docid C = (6, 7, 8, 9, EOS) is made likely token by token (LM-head biases), so it
    outscores the shorter D = (6, 10, EOS) although it finishes two steps later. HF's
    early_stopping=True stops once two docids (A, D) are finished and drops C; the default stops
    only when no running beam can still beat a kept docid."""
    tokens = [(3, EOS), (4, 5, EOS), (6, 7, 8, 9, EOS), (6, 10, EOS)]
    model, table = setup(bert, tmp_path / "stop", tokens, "tu")
    with torch.no_grad():
        bias = model.get_output_embeddings().bias
        bias.zero_()
        bias[[6, 7, 8, 9]] = 5.0
        bias[[4, 5, EOS]] = 3.0
        bias[3] = 3.2
    query = QUERIES[0]
    sums = {d: oracle(model, query, d) for d in tokens}
    assert sums[tokens[2]] > sums[tokens[3]]            # the long docid is the better one

    def returned(decoding):
        found = constrained_generate(model, torch.tensor([query]), None, docid_trie(model, table), decoding=decoding)
        return [b.docid for b in found[0]]

    def dropped_better(got):
        return [d for d in tokens if d not in got and sums[d] > min(sums[g] for g in got)]

    for rule in ("never", "false"):
        got = returned(DecodingArguments(beams=2, early_stopping=rule))
        assert got == sorted(tokens, key=lambda d: -sums[d])[:2] and not dropped_better(got)
    assert tokens[2] in dropped_better(returned(DecodingArguments(beams=2, early_stopping="true")))


def test_length_normalised_ranking_is_available_and_differs(bert, tmp_path):
    model, table = setup(bert, tmp_path / "pq", PQ, "pq")
    with torch.no_grad():  # cheap extra tokens: longer docids with close sums and better means
        model.get_output_embeddings().bias[[3, 4]] = 2.0
    trie = docid_trie(model, table)
    normalised = DecodingArguments(beams=len(PQ), ranking="length_normalised")
    differs = False
    for query in QUERIES:
        sums = {d: oracle(model, query, d) for d in PQ}
        mean = {d: s / (len(d) + 1) for d, s in sums.items()}        # + the end edge, as HF counts it
        found = constrained_generate(model, torch.tensor([query]), None, trie, decoding=normalised)[0]
        assert [b.docid for b in found] == sorted(PQ, key=lambda d: -mean[d])
        np.testing.assert_allclose([b.score for b in found], [mean[b.docid] for b in found], atol=1e-4, rtol=0)
        differs |= [b.docid for b in found] != sorted(PQ, key=lambda d: -sums[d])
    assert differs


def test_decoding_arguments_refuse_contradictions():
    from ddro.errors import DDROError

    with pytest.raises(DDROError, match="length_penalty"):
        DecodingArguments(length_penalty=1.0)
    with pytest.raises(DDROError, match="ranking"):
        DecodingArguments(ranking="mean")
    with pytest.raises(DDROError, match="beams"):
        DecodingArguments(beams=0)


def test_no_setting_comes_from_the_checkpoints_generation_config(bert, tmp_path):
    """A checkpoint's saved generation settings (length penalty, early stopping, a shorter max
    length, a repetition penalty) change nothing: every setting is passed explicitly."""
    model, table = setup(bert, tmp_path / "tu", TU, "tu")
    ids = torch.tensor(QUERIES)
    trie = docid_trie(model, table)
    before = constrained_generate(model, ids, None, trie, len(TU))
    g = model.generation_config
    g.length_penalty, g.early_stopping, g.max_new_tokens, g.repetition_penalty = 2.0, True, 2, 3.0
    g.no_repeat_ngram_size = 1
    assert constrained_generate(model, ids, None, trie, len(TU)) == before
    assert model.generation_config is g and g.length_penalty == 2.0        # left as it was
