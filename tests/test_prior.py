"""The dense prior (ddro.modeling.prior): with the head at zero, the generative model ranks docids
exactly as asymmetric PQ scoring of the encoder's own query embedding does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ddro.config import parse_args
from ddro.errors import DDROError
from ddro.eval.constrained import constrained_generate
from ddro.eval.trie import DocidTrie
from ddro.io import dumps_line
from ddro.modeling import ModelArguments, build_model, load_model, save_model
from ddro.modeling.prior import DensePriorModel
from ddro.train.ddro_loss import docid_logps, grouped_logps
from model_fixtures import WORDS, docid_folder, small_args, tiny_bert_encoder

M, K, DSUB, OFFSET, N_DOCS = 4, 4, 8, 3, 16  # the tiny encoder's hidden size is M * DSUB = 32
TEXTS = [" ".join(WORDS[i:i + n]) for i, n in ((0, 3), (5, 7), (11, 2))]  # different lengths: padding


def pq_params(embedder, m=M, k=K):
    return {"subspaces": m, "bits": int(np.log2(k)), "centroids": k, "codebook": "codebook.npy",
            "embedding": {"model": str(embedder), "dim": 32, "normalized": True}}


def pq_table(folder, embedder, *, codebook=None, tokens=None, add_doc_num=M * K, params=None, extra_tokens=0):
    rng = np.random.default_rng(0)
    book = rng.normal(scale=0.3, size=(M, K, DSUB)).astype(np.float32) if codebook is None else codebook
    if tokens is None:  # distinct random codes
        combos = rng.choice(K ** M, size=N_DOCS, replace=False)
        tokens = [tuple(OFFSET + K * m + (c // K ** m) % K for m in range(M)) for c in combos]
    return docid_folder(folder, [f"d{i}" for i in range(len(tokens))], m=M, k=K, tokens=tokens,
                        params=params or pq_params(embedder), arrays={"codebook.npy": book}, add_doc_num=add_doc_num,
                        extra_tokens=extra_tokens)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "bert"
    return path, tiny_bert_encoder(path)


@pytest.fixture(scope="module")
def query_vectors(encoder):
    """The queries embedded the way `ddro docids` embeds documents (sentence-transformers, normalised)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(encoder[0]), device="cpu")
    return st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)


def build(encoder, table, form, tau=20.0):
    model = build_model(small_args("minilm-decoder", encoder[0], dense_prior=form, prior_tau=tau), table).model
    return model.eval()


def queries(tok):
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    return batch.input_ids, batch.attention_mask


def pq_scores(table, q: np.ndarray, form: str) -> np.ndarray:
    """(queries, docs) asymmetric PQ score from the codebook: <q, x~> (ip) or -||q - x~||^2 / 2 (l2)."""
    book = np.load(table.path / "codebook.npy")
    x = np.stack([np.concatenate([book[m, t - OFFSET - K * m] for m, t in enumerate(toks[:M])])
                  for toks in table.tokens])
    if form == "ip":
        return q @ x.T
    return -0.5 * ((q[:, None, :] - x[None]) ** 2).sum(-1)


def all_logps(model, ids, mask, table, grouped=False):
    """(queries, docs) summed docid log-prob, teacher forcing."""
    labels = torch.tensor(table.tokens)
    rows = []
    with torch.no_grad():
        for i in range(len(ids)):
            n = len(labels)
            if grouped:  # the encoder_outputs path (DDRO's pair pass, the reference log-probs)
                lp = grouped_logps(model, ids[i:i + 1], mask[i:i + 1], labels, torch.zeros(n, dtype=torch.long))
            else:        # the labels path (SFT)
                lp = docid_logps(model, ids[i:i + 1].repeat(n, 1), mask[i:i + 1].repeat(n, 1), labels)
            rows.append(lp.numpy())
    return np.stack(rows)


@pytest.mark.parametrize("form", ["ip", "l2"])
def test_zero_step_ranking_is_asymmetric_pq(encoder, query_vectors, tmp_path, form):
    table = pq_table(tmp_path / "docids", encoder[0])
    model = build(encoder, table, form, tau=20.0)
    ids, mask = queries(encoder[1])
    want = pq_scores(table, query_vectors, form)
    for grouped in (False, True):
        got = all_logps(model, ids, mask, table, grouped)
        # log-softmax removes a constant per (query, position): differences are tau * score differences
        np.testing.assert_allclose(got - got[:, :1], 20.0 * (want - want[:, :1]), atol=2e-4)
        assert (np.argsort(-got, 1) == np.argsort(-want, 1)).all()
    trie = DocidTrie(list(table.groups), end_token=model.generation_config.eos_token_id)
    beams = constrained_generate(model, ids, mask, trie, num_beams=N_DOCS)
    for q, result in enumerate(beams):
        assert len(result) == N_DOCS
        assert [table.groups[b.docid][0] for b in result] == [table.doc_ids[j] for j in np.argsort(-want[q])]
        np.testing.assert_allclose([b.score for b in result], np.sort(got[q])[::-1], atol=1e-4)


def test_prior_rows_and_positions_dedup_position_favours_dedup_tokens(encoder, query_vectors, tmp_path):
    from ddro.modeling.prior import EXTRA_BIAS

    # two colliding documents, resolved by one extra token each at position M
    tokens = [tuple(OFFSET + K * m + c for m, c in enumerate(codes)) for codes in ((0, 1, 2, 3), (1, 1, 1, 1))]
    tokens = [tokens[0] + (OFFSET + M * K,), tokens[0] + (OFFSET + M * K + 1,), tokens[1]]
    table = pq_table(tmp_path / "docids", encoder[0], tokens=tokens, add_doc_num=M * K + 2, extra_tokens=2)
    model = build(encoder, table, "ip", tau=5.0)
    ids, mask = queries(encoder[1])
    decoder_ids = torch.tensor([[1, *tokens[0]]]).repeat(len(ids), 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits.numpy()
    book = np.load(table.path / "codebook.npy")
    want = np.zeros_like(logits)   # (queries, M + 1, vocab)
    for m in range(M):
        want[:, m, OFFSET + K * m:OFFSET + K * (m + 1)] = 5.0 * query_vectors[:, m * DSUB:(m + 1) * DSUB] @ book[m].T
    want[:, M, OFFSET + M * K:OFFSET + M * K + 2] = EXTRA_BIAS   # only the two dedup rows, only at position M
    np.testing.assert_allclose(logits, want, atol=1e-5)
    # so each colliding docid pays log 2 for its extra token, not log V
    logp = torch.log_softmax(torch.from_numpy(logits[:, M]), -1)[:, OFFSET + M * K:OFFSET + M * K + 2]
    np.testing.assert_allclose(logp.numpy(), -np.log(2), atol=1e-6)


def test_kv_cached_generation_sees_the_right_positions(encoder, tmp_path):
    table = pq_table(tmp_path / "docids", encoder[0])
    model = build(encoder, table, "l2")
    torch.manual_seed(1)
    with torch.no_grad():  # learned logits that are not zero, as after training
        model.get_output_embeddings().weight.normal_(0, 0.5)
    ids, mask = queries(encoder[1])
    decoder_ids = torch.tensor([[1, *table.tokens[5]]]).repeat(len(ids), 1)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=False).logits
        cache = None
        for t in range(decoder_ids.shape[1]):
            out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids[:, t:t + 1], cache=cache,
                        use_cache=True)
            cache = out.cache
            torch.testing.assert_close(out.logits[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
    # beam search (KV cache, beams reordered) scores each docid as teacher forcing does
    got = all_logps(model, ids, mask, table)
    trie = DocidTrie(list(table.groups), end_token=model.generation_config.eos_token_id)
    for q, result in enumerate(constrained_generate(model, ids, mask, trie, num_beams=N_DOCS)):
        index = {toks: j for j, toks in enumerate(table.tokens)}
        np.testing.assert_allclose([b.score for b in result], [got[q, index[b.docid]] for b in result], atol=1e-4)


def test_gradient_reaches_tau_and_checkpoint_round_trips(encoder, tmp_path):
    table = pq_table(tmp_path / "docids", encoder[0])
    built = build_model(small_args("minilm-decoder", encoder[0], dense_prior="ip", prior_tau=20.0,
                                   docid_init="codebook"), table)
    model = built.model.train()
    ids, mask = queries(encoder[1])
    labels = torch.tensor([table.tokens[i] for i in range(len(ids))])
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert model.prior_log_tau.grad is not None and model.prior_log_tau.grad.abs().item() > 0
    head, inputs = model.get_output_embeddings().weight, model.decoder.get_input_embeddings().weight
    assert head.abs().sum() == 0 and inputs[OFFSET:].abs().sum() > 0   # untied: codebook inputs, zero head
    with torch.no_grad():
        model.prior_log_tau.fill_(np.log(7.0))
        head.normal_(0, 0.1)
    save_model(model, built.tokenizer, built.info, table, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["dense_prior"] == "ip"
    loaded = load_model(tmp_path / "ckpt", table)
    assert isinstance(loaded.model, DensePriorModel) and loaded.info["dense_prior"]["form"] == "ip"
    assert loaded.model.tau.item() == pytest.approx(7.0)
    assert loaded.model.get_output_embeddings().weight is not loaded.model.decoder.get_input_embeddings().weight
    model.eval(), loaded.model.eval()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, labels=labels).logits
        b = loaded.model(input_ids=ids, attention_mask=mask, labels=labels).logits
    torch.testing.assert_close(a, b)


def test_checkpoint_and_record_must_agree(encoder, tmp_path):
    table = pq_table(tmp_path / "docids", encoder[0])
    prior = build_model(small_args("minilm-decoder", encoder[0], dense_prior="ip"), table)
    plain = build_model(small_args("minilm-decoder", encoder[0]), table)
    for name, built, edit in (("a", prior, lambda info: info.pop("dense_prior")),
                              ("b", plain, lambda info: info.update(dense_prior={"form": "ip"}))):
        save_model(built.model, built.tokenizer, built.info, table, tmp_path / name)
        info = json.loads((tmp_path / name / "ddro_model.json").read_text())
        edit(info)
        (tmp_path / name / "ddro_model.json").write_text(json.dumps(info))
        with pytest.raises(DDROError, match="dense prior"):
            load_model(tmp_path / name, table)


def test_refusals(encoder, tmp_path):
    path = encoder[0]
    with pytest.raises(DDROError, match="needs construction minilm-decoder"):
        build_model(ModelArguments(construction="t5", model_name_or_path="t5-base", dense_prior="ip"), None)
    table = pq_table(tmp_path / "ok", path)
    with pytest.raises(DDROError, match="unknown dense_prior"):
        build_model(small_args("minilm-decoder", path, dense_prior="cosine"), table)
    with pytest.raises(DDROError, match="prior_tau"):
        build_model(small_args("minilm-decoder", path, dense_prior="ip", prior_tau=0.0), table)
    atomic = docid_folder(tmp_path / "atomic", [f"d{i}" for i in range(4)], encoding="atomic",
                          tokens=[(OFFSET + i,) for i in range(4)], add_doc_num=4)
    with pytest.raises(DDROError, match="needs PQ docids"):
        build_model(small_args("minilm-decoder", path, dense_prior="ip"), atomic)
    other = pq_table(tmp_path / "other", path, params=pq_params("sentence-transformers/gtr-t5-base"))
    with pytest.raises(DDROError, match="gtr-t5-base.*not of this model's encoder"):
        build_model(small_args("minilm-decoder", path, dense_prior="l2"), other)
    narrow = pq_table(tmp_path / "narrow", path, codebook=np.zeros((M, K, DSUB // 2), np.float32))
    with pytest.raises(DDROError, match="16 dimensions, the encoder's hidden size is 32"):
        build_model(small_args("minilm-decoder", path, dense_prior="ip"), narrow)


def test_model_init_then_eval_ranks_like_pq_and_config_keys_reach_sft(encoder, query_vectors, tmp_path):
    from ddro.eval.evaluate import main as eval_main
    from ddro.modeling.init import main as init_main
    from ddro.train.arguments import DataArguments, SftArguments, SftTrainingArguments

    table = pq_table(tmp_path / "docids", encoder[0])
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"construction": "minilm-decoder", "model_name_or_path": str(encoder[0]),
                                      "hidden_size": 32, "intermediate_size": 64, "decoder_layers": 1,
                                      "num_heads": 2, "dense_prior": "l2", "prior_tau": 10.0}))
    init_main(["--config", str(config), "--docids", str(table.path), "--out", str(tmp_path / "m0")])
    test = tmp_path / "test.jsonl"
    ids = [encoder[1](t).input_ids for t in TEXTS]
    test.write_text("".join(dumps_line({"query_id": f"q{i}", "input_ids": x, "relevant": {"d0": 1}})
                            for i, x in enumerate(ids)))
    eval_main(["--model", str(tmp_path / "m0"), "--docids", str(table.path), "--test_file", str(test),
               "--out", str(tmp_path / "eval"), "--beams", str(N_DOCS), "--device", "cpu"])
    run = {}
    for line in (tmp_path / "eval" / "run.trec").read_text().splitlines():
        qid, _, doc, rank, *_ = line.split()
        run.setdefault(qid, []).append(doc)
    want = pq_scores(table, query_vectors, "l2")
    assert [run[f"q{i}"] for i in range(len(TEXTS))] == [[f"d{j}" for j in np.argsort(-w)] for w in want]
    # the same keys in an SFT config (what the pipeline's sft section and scripts/sft/train_sft.sh pass)
    config.write_text(config.read_text() + f"instances: x\ndocids: x\noutput_dir: {tmp_path / 'sft'}\n")
    model_args, *_ = parse_args([ModelArguments, DataArguments, SftArguments, SftTrainingArguments],
                                ["--config", str(config)])
    assert (model_args.dense_prior, model_args.prior_tau) == ("l2", 10.0)
