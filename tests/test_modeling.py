"""Model constructions and checkpoint folders, on tiny models built in tmp_path
(helpers in model_fixtures.py)."""
from __future__ import annotations

import json

import pytest
import torch

from ddro.errors import DDROError
from ddro.modeling import (
    MODEL_INFO,
    ModelArguments,
    build_model,
    freeze_encoder_embeddings,
    load_model,
    output_rows,
    save_model,
)
from model_fixtures import DOCS, WORDS, docid_folder, small_args, tiny_bert_encoder, tiny_pretrained_t5


@pytest.fixture
def t5_setup(tmp_path):
    tok = tiny_pretrained_t5(tmp_path / "t5")
    table = docid_folder(tmp_path / "docids_t5", DOCS, target_vocab="tokenizer", vocab_offset=len(tok),
                         tokenizer=tok)
    return tmp_path / "t5", table


@pytest.fixture
def bert_setup(tmp_path):
    tiny_bert_encoder(tmp_path / "bert")
    return tmp_path / "bert", docid_folder(tmp_path / "docids_own", DOCS)


def batch_for(tokenizer, table, texts=("protein cell", "cancer gene study")):
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    labels = torch.tensor([table.tokens[i] for i in range(len(texts))])
    return enc.input_ids, enc.attention_mask, labels


def train_steps(model, inputs, mask, labels, steps=15, lr=1e-2):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------- tests
CASES = ["t5", "t5-new-head", "t5-scratch", "minilm-decoder"]


def built_case(case, t5_setup, bert_setup, tmp_path):
    if case.startswith("t5") and case != "t5-scratch":
        path, table = t5_setup
        return build_model(ModelArguments("t5", str(path), new_head=case == "t5-new-head"), table), table
    if case == "t5-scratch":
        path, table = t5_setup
        return build_model(small_args("t5-scratch", path), table), table
    path, table = bert_setup
    return build_model(small_args("minilm-decoder", path), table), table


@pytest.mark.parametrize("case", CASES)
def test_builds_trains_saves_and_reloads_identically(case, t5_setup, bert_setup, tmp_path):
    built, table = built_case(case, t5_setup, bert_setup, tmp_path)
    model, tok = built.model, built.tokenizer
    assert output_rows(model) >= table.required_vocab
    inputs, mask, labels = batch_for(tok, table)
    losses = train_steps(model, inputs, mask, labels)
    assert losses[-1] < 0.5 * losses[0]

    save_model(model, tok, built.info, table, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert not list((tmp_path / "ckpt").glob("*.bin"))
    loaded = load_model(tmp_path / "ckpt", docids=table)
    model.eval()
    loaded.model.eval()
    with torch.no_grad():
        a = model(input_ids=inputs, attention_mask=mask, labels=labels).logits
        b = loaded.model(input_ids=inputs, attention_mask=mask, labels=labels).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.tokenizer("protein cell").input_ids == tok("protein cell").input_ids
    # generate works from the saved generation config alone and emits the docid length
    out = loaded.model.generate(input_ids=inputs, attention_mask=mask, num_beams=2, do_sample=False)
    assert out.shape[1] == table.max_len + 1
    assert out[0, 0].item() == built.info["vocab"]["decoder_start"]


def test_new_head_is_untied_and_survives_reload(t5_setup, tmp_path):
    path, table = t5_setup
    built = build_model(ModelArguments("t5", str(path), new_head=True), table)
    model = built.model
    assert model.lm_head.weight is not model.shared.weight
    torch.testing.assert_close(model.lm_head.weight, model.shared.weight)  # starts as a copy
    model.tie_weights()  # what from_pretrained / resize do internally: must not re-tie
    assert model.lm_head.weight is not model.shared.weight
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_model(model, built.tokenizer, built.info, table, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt", docids=table).model
    loaded.tie_weights()
    assert loaded.lm_head.weight is not loaded.shared.weight
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)
    torch.testing.assert_close(loaded.shared.weight, model.shared.weight)


def test_tied_head_stays_tied(t5_setup):
    path, table = t5_setup
    model = build_model(ModelArguments("t5", str(path), new_head=False), table).model
    assert model.lm_head.weight is model.shared.weight


def test_t5_with_tu_docids_keeps_pretrained_vocab_and_tied_head(tmp_path):
    from transformers import T5ForConditionalGeneration

    tok = tiny_pretrained_t5(tmp_path / "t5")
    tokens = [tuple(tok(w).input_ids) for w in WORDS[:6]]  # words + EOS, as TU docids
    table = docid_folder(tmp_path / "tu", DOCS, encoding="tu", target_vocab="tokenizer", vocab_offset=len(tok),
                         tokenizer=tok, tokens=tokens)
    built = build_model(ModelArguments("t5", str(tmp_path / "t5")), table)
    pretrained = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5")
    assert built.info["new_head"] is False
    assert built.model.lm_head.weight is built.model.shared.weight
    torch.testing.assert_close(built.model.shared.weight, pretrained.shared.weight)


def test_t5_vocab_grows_to_docid_table(t5_setup):
    path, table = t5_setup
    built = build_model(ModelArguments("t5", str(path)), table)
    offset = table.manifest["vocab_offset"]
    assert built.model.shared.weight.shape[0] == offset + table.manifest["add_doc_num"]
    assert built.info["vocab"]["vocab_offset"] == offset == len(built.tokenizer)


def test_t5_refuses_docids_for_another_tokenizer_length(tmp_path):
    tok = tiny_pretrained_t5(tmp_path / "t5")
    table = docid_folder(tmp_path / "docids", DOCS, target_vocab="tokenizer", vocab_offset=len(tok) + 5)
    with pytest.raises(DDROError, match="tokenizer has"):
        build_model(ModelArguments("t5", str(tmp_path / "t5")), table)


def test_constructions_refuse_the_wrong_target_vocab(t5_setup, bert_setup):
    t5_path, t5_table = t5_setup
    bert_path, own_table = bert_setup
    with pytest.raises(DDROError, match="target_vocab 'own'"):
        build_model(ModelArguments("t5", str(t5_path)), own_table)
    with pytest.raises(DDROError, match="its own vocabulary"):
        build_model(small_args("minilm-decoder", bert_path), t5_table)


def test_minilm_decoder_uses_own_vocabulary(bert_setup):
    path, table = bert_setup
    built = build_model(small_args("minilm-decoder", path), table)
    vocab = built.info["vocab"]
    assert (vocab["pad"], vocab["decoder_start"], vocab["eos"]) == (0, 1, 2)
    assert output_rows(built.model) == table.required_vocab == 3 + 8
    decoder_emb = built.model.decoder.get_input_embeddings().weight
    assert decoder_emb is not built.model.encoder.get_input_embeddings().weight
    # decoder inputs are the labels shifted right behind the decoder start token
    labels = torch.tensor([[5, 9], [4, -100]])
    shifted = built.model.prepare_decoder_input_ids_from_labels(labels)
    assert shifted.tolist() == [[1, 5], [1, 4]]


def test_offline_minilm_encoder_builds_with_default_sizes(tmp_path):
    table = docid_folder(tmp_path / "docids", DOCS)
    built = build_model(ModelArguments("minilm-decoder"), table)
    dec = built.model.decoder.config
    assert (dec.hidden_size, dec.num_hidden_layers, dec.num_attention_heads, dec.intermediate_size) == \
        (384, 3, 6, 1536)
    assert dec.is_decoder and dec.add_cross_attention
    frozen = freeze_encoder_embeddings(built.model)
    assert frozen == 30522 * 384
    assert not built.model.encoder.embeddings.word_embeddings.weight.requires_grad


def test_freeze_refuses_shared_t5_embeddings(t5_setup):
    path, table = t5_setup
    model = build_model(ModelArguments("t5", str(path)), table).model
    with pytest.raises(DDROError, match="shares its embedding"):
        freeze_encoder_embeddings(model)


def test_load_refuses_vocab_and_docid_mismatch(bert_setup, tmp_path):
    path, table = bert_setup
    built = build_model(small_args("minilm-decoder", path), table)
    save_model(built.model, built.tokenizer, built.info, table, tmp_path / "ckpt")
    bigger = docid_folder(tmp_path / "docids_big", DOCS, k=8)  # needs 3 + 16 rows
    with pytest.raises(DDROError, match=r"checkpoint .* has 11 vocabulary rows, docid table .* needs 19"):
        load_model(tmp_path / "ckpt", docids=bigger)
    other = docid_folder(tmp_path / "docids_other", DOCS, tokens=[(3 + i % 4, 7) for i in range(6)])
    with pytest.raises(DDROError, match="another docid table"):
        load_model(tmp_path / "ckpt", docids=other)
    info = json.loads((tmp_path / "ckpt" / MODEL_INFO).read_text())
    assert info["construction"] == "minilm-decoder" and info["vocab"]["decoder_rows"] == 11
    assert (tmp_path / "ckpt" / "docids.json").read_bytes() == (table.path / "manifest.json").read_bytes()


def test_load_refuses_a_folder_without_safetensors(bert_setup, tmp_path):
    path, table = bert_setup
    built = build_model(small_args("minilm-decoder", path), table)
    save_model(built.model, built.tokenizer, built.info, table, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(DDROError, match="safetensors"):
        load_model(tmp_path / "ckpt")


def test_build_is_seeded(t5_setup):
    path, table = t5_setup
    a = build_model(small_args("t5-scratch", path), table, seed=3).model
    b = build_model(small_args("t5-scratch", path), table, seed=3).model
    c = build_model(small_args("t5-scratch", path), table, seed=4).model
    torch.testing.assert_close(a.shared.weight, b.shared.weight)
    assert not torch.equal(a.shared.weight, c.shared.weight)


@pytest.mark.parametrize("case", ["minilm-decoder", "t5-new-head"])
def test_codebook_init_places_each_centroid_at_its_subspace(case, t5_setup, bert_setup):
    import numpy as np

    path, table = bert_setup if case == "minilm-decoder" else t5_setup
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(2, 4, 16)).astype(np.float32)  # M=2, K=4, hidden 32 = 2 x 16
    np.save(table.path / "codebook.npy", centroids)
    args = small_args("minilm-decoder", path, docid_init="codebook") if case == "minilm-decoder" else \
        ModelArguments("t5", str(path), new_head=True, docid_init="codebook")
    model = build_model(args, table).model
    offset = table.manifest["vocab_offset"]
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.decoder
    for weight in (decoder.get_input_embeddings().weight, model.get_output_embeddings().weight):
        token = offset + 4 * 1 + 3  # sub-space 1, code 3
        assert torch.allclose(weight[token, 16:], torch.from_numpy(centroids[1, 3]))
        assert not weight[token, :16].any()
        assert torch.allclose(weight[offset + 2, :16], torch.from_numpy(centroids[0, 2]))
    if case == "t5-new-head":  # the tokenizer's own rows are untouched
        assert not torch.equal(model.get_input_embeddings().weight[:offset], torch.zeros(offset, 32))


def test_codebook_init_refuses_mismatched_sizes_and_non_pq(bert_setup, tmp_path):
    import numpy as np

    path, table = bert_setup
    with pytest.raises(DDROError, match="codebook.npy is missing"):
        build_model(small_args("minilm-decoder", path, docid_init="codebook"), table)
    np.save(table.path / "codebook.npy", np.zeros((2, 4, 8), dtype=np.float32))  # dimension 16 != hidden 32
    with pytest.raises(DDROError, match="hidden size 32 differs"):
        build_model(small_args("minilm-decoder", path, docid_init="codebook"), table)
    atomic = docid_folder(tmp_path / "atomic", DOCS, encoding="atomic", tokens=[(3 + i,) for i in range(6)])
    with pytest.raises(DDROError, match="needs PQ docids"):
        build_model(small_args("minilm-decoder", path, docid_init="codebook"), atomic)
