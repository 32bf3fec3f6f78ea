"""DDRO: the loss on known numbers, log-prob masking, the pair forward, and the trainer on a tiny T5."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ddro.train.reference as reference_module
from ddro.errors import DDROError
from ddro.io import dumps_line
from ddro.manifest import read_manifest, write_manifest
from ddro.modeling import ModelArguments, build_model, load_model, save_model
from ddro.padding import IGNORE
from ddro.train.ddro import DDROArguments, DDROTrainingArguments, main, run
from ddro.train.ddro_loss import (
    ddro_loss,
    docid_logps,
    list_logps,
    listwise_loss,
    loss_function,
    pair_logps,
    rpo_loss,
    sequence_logps,
)
from ddro.train.ddro_trainer import disable_dropout
from ddro.train.pairs import (
    GroupCollator,
    GroupDataset,
    PairCollator,
    PairData,
    cap_pairs,
    encode_queries,
    group_bounds,
    group_rows,
)
from ddro.train.reference import compute_reference_logps, query_batches
from model_fixtures import WORDS, docid_folder, small_args, tiny_bert_encoder, tiny_pretrained_t5

DOCS = [f"d{i}" for i in range(12)]


# ----------------------------------------------------------------------------- pure functions

def test_loss_matches_the_formula_on_known_numbers():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -0.5])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -1.0])
    out = ddro_loss(pc, pr, rc, rr, beta=0.4)
    # pair 1: (-1 + 1.5) - (-3 + 2) = 1.5; pair 2: (-2 + 2) - (-0.5 + 1) = -0.5
    expected = [math.log(1 + math.exp(-0.4 * 1.5)), math.log(1 + math.exp(0.4 * 0.5))]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.2, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.4, 0.2])
    m = out.metrics()
    assert m["rewards/accuracies"] == 0.5 and m["rewards/margins"] == pytest.approx((0.6 - 0.2) / 2)
    # identical policy and reference: log 2 whatever the log-probs
    assert ddro_loss(pc, pr, pc, pr, beta=0.4).loss.item() == pytest.approx(math.log(2))


def test_rpo_adds_the_positive_nll_on_known_numbers():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -0.5])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -1.0])
    out = rpo_loss(pc, pr, rc, rr, beta=0.4, rpo_alpha=0.5)
    pairwise = [math.log(1 + math.exp(-0.4 * 1.5)), math.log(1 + math.exp(0.4 * 0.5))]
    expected = [pairwise[0] + 0.5 * 1.0, pairwise[1] + 0.5 * 2.0]  # + alpha * -log p(d+|q), summed over tokens
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert out.metrics() == pytest.approx(ddro_loss(pc, pr, rc, rr, beta=0.4).metrics())  # same rewards
    assert rpo_loss(pc, pr, rc, rr, beta=0.4, rpo_alpha=0.0).losses.tolist() == pytest.approx(pairwise, abs=1e-6)


def test_listwise_loss_on_known_numbers_with_padded_negatives():
    pc, rc = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    # group 2 has one negative; its two padded slots hold junk that must not count
    pr = torch.tensor([[-3.0, -0.5, -4.0], [-1.0, 99.0, -99.0]])
    rr = torch.tensor([[-2.0, -1.0, -3.0], [-2.5, 7.0, 5.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = listwise_loss(pc, pr, rc, rr, beta=0.4, rejected_mask=mask)
    # log-ratios: group 1 r+ = 0.5, r- = (-1, 0.5, -1); group 2 r+ = 0, r- = (1.5,)
    expected = []
    for r_pos, r_neg in ((0.5, [-1.0, 0.5, -1.0]), (0.0, [1.5])):
        scores = 0.4 * np.array([r_pos, *r_neg])
        expected.append(float(np.log(np.exp(scores).sum()) - scores[0]))
    assert expected[1] == pytest.approx(math.log(1 + math.exp(0.4 * 1.5)))  # one negative: the sigmoid loss
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() == pytest.approx(np.mean(expected), abs=1e-6)
    m = out.metrics()  # chosen per group; rejected per real negative; margins, accuracies per real pair
    assert m["rewards/chosen"] == pytest.approx(0.1) and m["rewards/rejected"] == pytest.approx(0.0, abs=1e-7)
    assert m["rewards/margins"] == pytest.approx((0.6 + 0.0 + 0.6 - 0.6) / 4)
    assert m["rewards/accuracies"] == 0.5
    assert m["logps/chosen"] == pytest.approx(-1.5) and m["logps/rejected"] == pytest.approx((-3 - 0.5 - 4 - 1) / 4)


def grads(loss_fn, *values, **kw):
    inputs = [torch.tensor(v, requires_grad=True) for v in values]
    out = loss_fn(*inputs, **kw)
    out.losses.sum().backward()
    return out, [t.grad for t in inputs]


def test_loss_gradients():
    pc, pr, rc, rr = [-1.0, -2.0, -0.3], [-3.0, -0.5, -0.2], [-1.5, -2.0, -0.4], [-2.0, -1.0, -0.1]
    sig, (g_pc, g_pr, _, _) = grads(ddro_loss, pc, pr, rc, rr, beta=0.4)
    _, (r_pc, r_pr, _, _) = grads(rpo_loss, pc, pr, rc, rr, beta=0.4, rpo_alpha=0.7)
    torch.testing.assert_close(r_pc - g_pc, torch.full((3,), -0.7))  # d(-alpha * log p(d+))/d log p(d+)
    torch.testing.assert_close(r_pr, g_pr)
    # listwise with one negative per group is the sigmoid loss, values and gradients
    one = [[v] for v in pr], [[v] for v in rr]
    lst, (l_pc, l_pr, l_rc, _) = grads(listwise_loss, pc, one[0], rc, one[1], beta=0.4)
    torch.testing.assert_close(lst.losses, sig.losses)
    torch.testing.assert_close(l_pc, g_pc)
    torch.testing.assert_close(l_pr[:, 0], g_pr)
    # padded negatives: no gradient, finite elsewhere
    mask = torch.tensor([[True, False], [True, True], [True, False]])
    _, (m_pc, m_pr, _, _) = grads(listwise_loss, pc, [[-3.0, 50.0], [-0.5, -1.0], [-0.2, 0.0]], rc,
                                  [[-2.0, 0.0], [-1.0, -2.0], [-0.1, 0.0]], beta=0.4, rejected_mask=mask)
    assert torch.isfinite(m_pc).all() and torch.isfinite(m_pr).all()
    assert m_pr[~mask].abs().sum() == 0 and (m_pr[mask] > 0).all() and (m_pc < 0).all()
    torch.testing.assert_close(m_pr[[0, 2], 0], g_pr[[0, 2]])  # one real negative: the sigmoid's gradient


def test_metrics_from_padded_and_gathered_tensors():
    """DDP pads each rank's [B, K] tensors to the largest K and concatenates the ranks: same metrics."""
    mask = torch.tensor([[True, True], [True, False]])
    out = listwise_loss(torch.tensor([-1.0, -2.0]), torch.tensor([[-3.0, -0.5], [-1.0, 0.0]]),
                        torch.tensor([-1.5, -2.0]), torch.tensor([[-2.0, -1.0], [-2.5, 0.0]]), 0.4, mask)

    def two_ranks_wider(t):  # accelerate's pad_across_processes pads with zeros (the mask as float: False)
        t = F.pad(t, (0, 3)) if t.dim() == 2 else t
        return torch.cat([t, t])
    assert out.gathered(two_ranks_wider).metrics() == pytest.approx(out.metrics())
    pairs = ddro_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-1.5]), torch.tensor([-2.0]), 0.4)
    assert pairs.gathered(two_ranks_wider).metrics() == pytest.approx(pairs.metrics())


def test_loss_function_dispatch_and_refusals():
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-1.5]), torch.tensor([-2.0])
    want = ddro_loss(pc, pr, rc, rr, beta=0.3).losses
    torch.testing.assert_close(loss_function("sigmoid", 0.3)(pc, pr, rc, rr).losses, want)
    torch.testing.assert_close(loss_function("rpo", 0.3, rpo_alpha=2.0)(pc, pr, rc, rr).losses, want + 2.0)
    torch.testing.assert_close(loss_function("listwise", 0.3)(pc, pr[:, None], rc, rr[:, None]).losses, want)
    for bad, match in ((("foo", 0.4, 1.0), "--loss_type: one of sigmoid, rpo, listwise"),
                       (("rpo", 0.4, -1.0), "--rpo_alpha"), (("sigmoid", 0.0, 1.0), "--beta")):
        with pytest.raises(DDROError, match=match):
            loss_function(*bad)


def test_sequence_logps_sums_label_tokens_and_masks_padding():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7)
    labels = torch.tensor([[1, 2, 3, 4], [5, 6, IGNORE, IGNORE], [IGNORE] * 4])
    got = sequence_logps(logits, labels)
    logp = torch.log_softmax(logits, -1)
    assert got[0].item() == pytest.approx(sum(logp[0, t, labels[0, t]].item() for t in range(4)), abs=1e-5)
    assert got[1].item() == pytest.approx(logp[1, 0, 5].item() + logp[1, 1, 6].item(), abs=1e-5)
    assert got[2].item() == 0.0
    changed = logits.clone()
    changed[1, 2:] = 100.0  # logits at padded positions do not count
    assert sequence_logps(changed, labels)[1].item() == pytest.approx(got[1].item(), abs=1e-6)


def test_collator_pads_queries_and_labels():
    batch = PairCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 1], "chosen": [10, 11], "rejected": [12, 13, 14], "ref_chosen": -1.0,
         "ref_rejected": -2.0},
        {"input_ids": [7, 1], "chosen": [15], "rejected": [16], "ref_chosen": -3.0, "ref_rejected": -4.0}])
    assert batch["input_ids"].tolist() == [[5, 6, 1], [7, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["chosen_labels"].tolist() == [[10, 11], [15, IGNORE]]
    assert batch["rejected_labels"].tolist() == [[12, 13, 14], [16, IGNORE, IGNORE]]
    assert batch["ref_chosen"].tolist() == [-1.0, -3.0]


def test_rows_grouped_by_query_and_positive():
    rows = np.array([(0, 1, 5), (2, 3, 4), (0, 1, 6), (0, 2, 7), (2, 3, 8), (0, 1, 9)])
    grouped = group_rows(rows)  # groups in order of first appearance, negatives in file order
    assert grouped.tolist() == [[0, 1, 5], [0, 1, 6], [0, 1, 9], [2, 3, 4], [2, 3, 8], [0, 2, 7]]
    assert group_bounds(grouped).tolist() == [0, 3, 5, 6]
    assert group_bounds(rows[:0]).tolist() == [0] and len(group_rows(rows[:0])) == 0
    data = PairData([[10, 1], [11, 1], [12, 1]], [(20 + i,) for i in range(10)], *grouped.T)
    ds = GroupDataset(data, np.arange(6, dtype=np.float32), -np.arange(6, dtype=np.float32))
    assert len(ds) == 3
    assert ds[0] == {"input_ids": [10, 1], "chosen": (21,), "rejected": [(25,), (26,), (29,)], "ref_chosen": 0.0,
                     "ref_rejected": [-0.0, -1.0, -2.0]}
    assert ds[2]["rejected"] == [(27,)] and ds[2]["ref_rejected"] == [-5.0]


def test_group_collator_pads_negatives_and_masks_them():
    batch = GroupCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 1], "chosen": [10, 11], "rejected": [[12, 13, 14], [15]], "ref_chosen": -1.0,
         "ref_rejected": [-2.0, -3.0]},
        {"input_ids": [7, 1], "chosen": [16], "rejected": [[17, 18]], "ref_chosen": -4.0, "ref_rejected": [-5.0]}])
    assert batch["input_ids"].tolist() == [[5, 6, 1], [7, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["chosen_labels"].tolist() == [[10, 11], [16, IGNORE]]
    assert batch["rejected_labels"].tolist() == [[[12, 13, 14], [15, IGNORE, IGNORE]],
                                                 [[17, 18, IGNORE], [IGNORE] * 3]]
    assert batch["rejected_mask"].tolist() == [[True, True], [True, False]]
    assert batch["ref_chosen"].tolist() == [-1.0, -4.0]
    assert batch["ref_rejected"].tolist() == [[-2.0, -3.0], [-5.0, 0.0]]


def test_reference_batches_hold_whole_queries():
    items = np.array([(0, 1), (0, 2), (1, 0), (2, 1), (2, 3), (2, 4), (2, 5), (2, 6), (3, 2)])
    batches = list(query_batches(items, batch_size=3))
    assert batches == [(0, 3), (3, 8), (8, 9)]  # query 2 (5 rows) alone, over the limit
    assert list(query_batches(items, batch_size=100)) == [(0, 9)]
    assert list(query_batches(items[:0], batch_size=3)) == []


# ----------------------------------------------------------------------------- models

@pytest.fixture
def t5_ckpt(tmp_path):
    """A T5 "SFT checkpoint" (construction t5 over a tiny random T5) and its docid table."""
    tok = tiny_pretrained_t5(tmp_path / "t5")
    table = docid_folder(tmp_path / "docids", DOCS, m=2, k=4, target_vocab="tokenizer", vocab_offset=len(tok),
                         tokenizer=tok)
    built = build_model(ModelArguments("t5", str(tmp_path / "t5")), table)
    with torch.no_grad():  # as after SFT: the untied head differs from the embeddings (an exact copy
        built.model.lm_head.weight.mul_(1.1)  # reloads tied in transformers 5)
    save_model(built.model, built.tokenizer, built.info, table, tmp_path / "sft")
    return tmp_path / "sft", table


def negatives_folder(folder, pairs, val_pairs):
    folder.mkdir()
    qids = sorted({q for q, _, _ in pairs + val_pairs})
    with open(folder / "queries.jsonl", "w") as f:
        for q in qids:
            i = int(q[1:])
            f.write(dumps_line({"_id": q, "text": f"{WORDS[i]} {WORDS[i + 5]} {WORDS[(3 * i) % 20]}"}))
    for name, rows in (("pairs.tsv", pairs), ("val_pairs.tsv", val_pairs)):
        (folder / name).write_text("".join(f"{q}\t{p}\t{n}\n" for q, p, n in rows))
    write_manifest(folder, "negatives", inputs={"collection": None}, command=["test"])
    return folder


PAIRS = [(f"q{i}", f"d{i}", f"d{(i + k) % 12}") for i in range(6) for k in (3, 7)]
VAL = [("q6", "d6", "d1"), ("q6", "d6", "d2")]


def ddro_args(tmp_path, ckpt, table, out="out", **train):
    args = DDROArguments(checkpoint=str(ckpt), docids=str(table.path), negatives=str(tmp_path / "neg"),
                         ref_cache_dir=str(tmp_path / "cache"))
    base = dict(output_dir=str(tmp_path / out), learning_rate=3e-3, warmup_steps=0, max_steps=12,
                per_device_train_batch_size=12, per_device_eval_batch_size=4, logging_steps=1,
                save_strategy="no", use_cpu=True, seed=0, lr_scheduler_type="constant")
    return args, DDROTrainingArguments(**{**base, **train})


def test_pair_forward_shares_the_encoder_exactly(t5_ckpt, tmp_path):
    """Encoder-once pair log-probs equal separate full forwards, for T5 and a BERT encoder-decoder."""
    ckpt, table = t5_ckpt
    tiny_bert_encoder(tmp_path / "bert")
    own = docid_folder(tmp_path / "own", DOCS)
    models = [load_model(ckpt, docids=table).model,
              build_model(small_args("minilm-decoder", tmp_path / "bert"), own).model]
    for model, tab in zip(models, (table, own)):
        model.eval()
        ids = torch.tensor([[5, 6, 7, 1], [8, 1, 0, 0]])
        mask = (torch.arange(4)[None] < torch.tensor([[4], [2]])).long()
        chosen = torch.tensor([tab.tokens[0], tab.tokens[1]])
        rejected = torch.tensor([[*tab.tokens[2], IGNORE], [*tab.tokens[3], IGNORE]])  # wider, padded
        c, r = pair_logps(model, ids, mask, chosen, rejected)
        c2, r2 = pair_logps(model, ids, mask, chosen, rejected, share_encoder=False)
        assert torch.allclose(c, docid_logps(model, ids, mask, chosen), atol=1e-5)
        assert torch.allclose(r, docid_logps(model, ids, mask, rejected), atol=1e-5)
        assert torch.allclose(c, c2, atol=1e-5) and torch.allclose(r, r2, atol=1e-5)
        assert (c < 0).all()
        # groups: query 1 has two negatives, query 2 one (its second slot is padding)
        negatives = torch.full((2, 2, rejected.shape[1]), IGNORE)
        negatives[:, 0] = rejected
        negatives[0, 1, :len(tab.tokens[4])] = torch.tensor(tab.tokens[4])
        real = torch.tensor([[True, True], [True, False]])
        alone = docid_logps(model, ids[:1], mask[:1], torch.tensor([tab.tokens[4]]))
        for share in (True, False):
            lc, lr = list_logps(model, ids, mask, chosen, negatives, real, share_encoder=share)
            assert torch.allclose(lc, c, atol=1e-5) and torch.allclose(lr[:, 0], r, atol=1e-5)
            assert torch.allclose(lr[0, 1], alone[0], atol=1e-5) and lr[1, 1] == 0


def test_disable_dropout_makes_training_mode_deterministic(t5_ckpt):
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                                d_kv=8, dropout_rate=0.5, decoder_start_token_id=0))
    model.train()
    ids, labels = torch.tensor([[3, 4, 5, 1]]), torch.tensor([[6, 7]])
    assert not torch.equal(model(input_ids=ids, labels=labels).logits, model(input_ids=ids, labels=labels).logits)
    disable_dropout(model)
    assert torch.equal(model(input_ids=ids, labels=labels).logits, model(input_ids=ids, labels=labels).logits)


# ----------------------------------------------------------------------------- trainer

def query_texts(folder) -> dict[str, str]:
    return {obj["_id"]: obj["text"] for obj in map(json.loads, open(folder / "queries.jsonl"))}


def fixed_batch_stats(model, ref_model, table, tokenizer, queries, pairs):
    """Mean DDRO loss and reward margin of `model` on `pairs` against `ref_model` (both eval mode)."""
    ids = encode_queries(tokenizer, [queries[q] for q, _, _ in pairs], True, 64)
    idx = {d: i for i, d in enumerate(table.doc_ids)}
    batch = PairCollator(tokenizer.pad_token_id)([
        {"input_ids": i, "chosen": table.tokens[idx[p]], "rejected": table.tokens[idx[n]], "ref_chosen": 0.0,
         "ref_rejected": 0.0} for i, (_, p, n) in zip(ids, pairs)])
    with torch.no_grad():
        args = (batch["input_ids"], batch["attention_mask"], batch["chosen_labels"], batch["rejected_labels"])
        pc, pr = pair_logps(model.eval(), *args)
        rc, rr = pair_logps(ref_model.eval(), *args)
    out = ddro_loss(pc, pr, rc, rr, beta=0.4)
    return out.loss.item(), out.metrics()["rewards/margins"]


def test_trainer_reduces_the_loss_and_writes_a_loadable_checkpoint(t5_ckpt, tmp_path):
    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    args, targs = ddro_args(tmp_path, ckpt, table)
    manifest = run(args, targs)
    out = tmp_path / "out"
    assert manifest["kind"] == "ddro" and read_manifest(out, "ddro")["counts"]["train_pairs"] == len(PAIRS)
    assert manifest["counts"]["val_pairs"] == 2 and manifest["counts"]["steps"] == 12
    trained = load_model(out, docids=table)  # same layout as an SFT checkpoint
    ref = load_model(ckpt, docids=table)
    loss, margin = fixed_batch_stats(trained.model, ref.model, table, ref.tokenizer,
                                     query_texts(tmp_path / "neg"), PAIRS)
    assert loss < math.log(2) - 0.05 and margin > 0.1
    history = json.loads((out / "log_history.json").read_text())
    train = [h for h in history if "loss" in h]
    # first step: policy == reference (dropout off, precomputed reference matches): loss log 2
    assert len(train) == 12 and train[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert train[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"] + 0.5
    assert train[-1]["rewards/accuracies"] > 0.5 and train[-1]["loss"] < train[0]["loss"]
    assert any("eval_rewards/accuracies" in h for h in history)
    assert "eval_loss" in manifest["metrics"]
    assert not (tmp_path / "out.trainer").exists()  # work folder removed after success


@pytest.mark.parametrize("loss_type", ["rpo", "listwise"])
def test_loss_types_train_end_to_end(t5_ckpt, tmp_path, loss_type):
    """`ddro train ddro --loss_type rpo|listwise` on the sigmoid test's pairs: the first step's loss is the
    loss at policy == reference, the loss falls, the positive's and negatives' log-probs are logged."""
    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    args, targs = ddro_args(tmp_path, ckpt, table)
    argv = ["--checkpoint", args.checkpoint, "--docids", args.docids, "--negatives", args.negatives,
            "--ref_cache_dir", args.ref_cache_dir, "--output_dir", targs.output_dir, "--learning_rate", "3e-3",
            "--warmup_steps", "0", "--max_steps", "8", "--per_device_train_batch_size", "12",
            "--per_device_eval_batch_size", "4", "--logging_steps", "1", "--save_strategy", "no", "--use_cpu", "true",
            "--seed", "0", "--lr_scheduler_type", "constant", "--loss_type", loss_type, "--rpo_alpha", "0.5"]
    main(argv)
    manifest = read_manifest(tmp_path / "out", "ddro")
    assert manifest["config"]["loss_type"] == loss_type and manifest["config"]["rpo_alpha"] == 0.5
    counts = manifest["counts"]
    assert (counts["train_pairs"], counts["val_pairs"], counts["steps"]) == (len(PAIRS), len(VAL), 8)
    if loss_type == "listwise":  # 6 (query, positive) groups of 2 negatives; validation: 1 group of 2
        assert (counts["train_groups"], counts["val_groups"]) == (6, 1)
    assert load_model(tmp_path / "out", docids=table).info["ddro"]["loss_type"] == loss_type
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    train = [h for h in history if "loss" in h]
    first = train[0]
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # policy == reference
    at_reference = math.log(3) if loss_type == "listwise" else math.log(2) - 0.5 * first["logps/chosen"]
    assert first["loss"] == pytest.approx(at_reference, abs=1e-4)
    assert train[-1]["loss"] < first["loss"] and train[-1]["rewards/margins"] > 0.1
    for h in (*train, next(h for h in history if "eval_loss" in h)):
        prefix = "eval_" if "eval_loss" in h else ""
        keys = ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies")
        assert all(math.isfinite(h[prefix + k]) for k in keys)
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0


def test_reference_cache_is_reused_and_invalidated(t5_ckpt, tmp_path, monkeypatch):
    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    calls = []

    def counting(*a, **kw):
        calls.append(1)
        return compute_reference_logps(*a, **kw)

    monkeypatch.setattr(reference_module, "compute_reference_logps", counting)
    run(*ddro_args(tmp_path, ckpt, table, out="a", max_steps=1, eval_strategy="no"))
    assert len(calls) == 1 and len(list((tmp_path / "cache").glob("ref-*.safetensors"))) == 1
    run(*ddro_args(tmp_path, ckpt, table, out="b", max_steps=1, eval_strategy="no", learning_rate=1e-4))
    assert len(calls) == 1  # reused
    # the same folder, other weights: a new checkpoint identity, a new cache entry
    loaded = load_model(ckpt, docids=table)
    with torch.no_grad():
        loaded.model.get_output_embeddings().weight.mul_(1.5)
    save_model(loaded.model, loaded.tokenizer, loaded.info, table, ckpt)
    run(*ddro_args(tmp_path, ckpt, table, out="c", max_steps=1, eval_strategy="no"))
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("ref-*.safetensors"))) == 2


def test_cached_reference_values_are_the_reference_log_probs(t5_ckpt, tmp_path):
    from safetensors.numpy import load_file

    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    run(*ddro_args(tmp_path, ckpt, table, max_steps=1, eval_strategy="no"))
    (cache,) = (tmp_path / "cache").glob("ref-*.safetensors")
    stored = load_file(str(cache))
    ref = load_model(ckpt, docids=table)
    queries = query_texts(tmp_path / "neg")
    qids = list(queries)
    q, d = stored["items"][5]
    ids = torch.tensor([encode_queries(ref.tokenizer, [queries[qids[q]]], True, 64)[0]])
    with torch.no_grad():
        want = docid_logps(ref.model.eval(), ids, torch.ones_like(ids), torch.tensor([table.tokens[d]]))
    assert stored["logps"][5] == pytest.approx(want.item(), abs=1e-5)
    assert len(stored["items"]) == len({(q_, p) for q_, p, _ in PAIRS + VAL} | {(q_, n) for q_, _, n in PAIRS + VAL})


def test_refusals(t5_ckpt, tmp_path):
    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    (tmp_path / "out.trainer" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(DDROError, match="pass --resume"):
        run(*ddro_args(tmp_path, ckpt, table))
    args, targs = ddro_args(tmp_path, ckpt, table, out="other")
    args.resume = True
    with pytest.raises(DDROError, match="no trainer checkpoint"):
        run(args, targs)
    args.overwrite = True
    with pytest.raises(DDROError, match="not both"):
        run(args, targs)
    with pytest.raises(DDROError, match="beta"):
        args, targs = ddro_args(tmp_path, ckpt, table, out="x")
        args.beta = 0
        run(args, targs)


@pytest.mark.parametrize("flags, message", [(["--loss_type", "foo"], "--loss_type: one of sigmoid, rpo, listwise"),
                                            (["--loss_type", "rpo", "--rpo_alpha", "-0.5"], "--rpo_alpha must be"),
                                            (["--beta", "0"], "--beta must be > 0")])
def test_bad_loss_settings_fail_in_one_line_before_loading(tmp_path, capsys, flags, message):
    missing = str(tmp_path / "missing")  # any load would fail with another error
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", missing, "--docids", missing, "--negatives", missing, "--output_dir",
              str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith(f"error: {message}") and "Traceback" not in "".join(err)
    with pytest.raises(DDROError, match=message.split()[0]):
        args = DDROArguments(checkpoint=missing, docids=missing, negatives=missing)
        for flag, value in zip(flags[::2], flags[1::2]):
            setattr(args, flag[2:], type(getattr(args, flag[2:]))(value))
        run(args, DDROTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True))


@pytest.mark.parametrize("loss_type", ["sigmoid", "listwise"])
def test_cli_config_file_and_resume(t5_ckpt, tmp_path, loss_type):
    """`ddro train ddro --config F` runs the same code; a run resumed from its checkpoint ends where an
    uninterrupted one does (pairs, and groups for listwise)."""
    import yaml
    from safetensors.torch import load_file

    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    config = {"checkpoint": str(ckpt), "docids": str(table.path), "negatives": str(tmp_path / "neg"),
              "output_dir": str(tmp_path / "out"), "ref_cache_dir": str(tmp_path / "cache"), "beta": 0.3,
              "max_steps": 2, "per_device_train_batch_size": 6, "learning_rate": 1e-3, "warmup_steps": 0,
              "lr_scheduler_type": "constant", "save_strategy": "steps", "save_steps": 1, "eval_strategy": "no",
              "use_cpu": True, "keep_work_dir": True, "save_total_limit": 10, "loss_type": loss_type}
    (tmp_path / "ddro.yaml").write_text(yaml.safe_dump(config))
    main(["--config", str(tmp_path / "ddro.yaml")])
    manifest = read_manifest(tmp_path / "out", "ddro")
    assert manifest["config"]["beta"] == 0.3 and manifest["config"]["max_grad_norm"] == 0.5  # paper default
    assert sorted(p.name for p in (tmp_path / "out.trainer").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    main(["--config", str(tmp_path / "ddro.yaml"), "--max_steps", "4", "--resume"])
    assert read_manifest(tmp_path / "out", "ddro")["counts"]["steps"] == 4
    main(["--config", str(tmp_path / "ddro.yaml"), "--max_steps", "4", "--output_dir", str(tmp_path / "straight"),
          "--save_strategy", "no"])
    resumed = load_file(str(tmp_path / "out" / "model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    first = load_file(str(tmp_path / "out.trainer" / "checkpoint-1" / "model.safetensors"))
    assert any(not torch.equal(first[k], straight[k]) for k in straight)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-6, rtol=0)


def test_cap_pairs_is_a_seeded_sample_in_file_order():
    train, val = np.arange(300).reshape(100, 3), np.arange(30).reshape(10, 3)
    a, a_val = cap_pairs(train, val, 20, seed=1)
    b, _ = cap_pairs(train, val, 20, seed=1)
    c, _ = cap_pairs(train, val, 20, seed=2)
    assert len(a) == 20 and len(a_val) == 2  # validation cut in the same proportion
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert {tuple(r) for r in a} <= {tuple(r) for r in train} and list(a[:, 0]) == sorted(a[:, 0])
    assert cap_pairs(train, val, 100, seed=1)[0] is train  # nothing to cut
    with pytest.raises(DDROError, match="--max_pairs"):
        cap_pairs(train, val, 0, seed=1)


def test_cap_pairs_keeps_whole_groups_when_grouped():
    # 40 groups of 1-4 negatives (sizes cycle 1, 2, 3, 4): 100 pairs; validation 5 groups of 2
    train = group_rows(np.array([(g, g, 1000 + n) for g in range(40) for n in range(g % 4 + 1)]))
    val = group_rows(np.array([(100 + g, g, 2000 + n) for g in range(5) for n in range(2)]))
    a, a_val = cap_pairs(train, val, 30, seed=1, grouped=True)
    assert np.array_equal(a, cap_pairs(train, val, 30, seed=1, grouped=True)[0])
    assert not np.array_equal(a, cap_pairs(train, val, 30, seed=2, grouped=True)[0])
    assert 26 <= len(a) <= 30 and list(a[:, 0]) == sorted(a[:, 0])  # full up to one group short, in order
    kept = set(a[:, 0].tolist())
    assert all((a[:, 0] == g).sum() == g % 4 + 1 for g in kept)  # every kept group whole
    assert len(a_val) == 2  # ceil(10 * 30 / 100) = 3 pairs: one whole group of 2
    one, _ = cap_pairs(train, val, 1, seed=3, grouped=True)
    assert len(set(one[:, 0].tolist())) == 1  # at least one group, even one over the limit


@pytest.mark.parametrize("loss_type", ["sigmoid", "listwise"])
def test_max_pairs_bounds_the_reference_pass_and_is_recorded(t5_ckpt, tmp_path, loss_type):
    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    args, targs = ddro_args(tmp_path, ckpt, table, max_steps=1, eval_strategy="no")
    args.max_pairs, args.loss_type = 4, loss_type
    counts = run(args, targs)["counts"]
    assert (counts["train_pairs"], counts["train_pairs_available"]) == (4, len(PAIRS))
    # listwise keeps whole groups: 2 of 2 negatives; validation's one group, whole
    assert (counts["val_pairs"], counts["val_pairs_available"]) == ({"sigmoid": 1, "listwise": 2}[loss_type], len(VAL))
    if loss_type == "listwise":
        assert (counts["train_groups"], counts["val_groups"]) == (2, 1)
        assert counts["reference_items"] == 2 * 3 + 3  # each group's query with d+ and its 2 negatives
    assert counts["reference_items"] <= 2 * (4 + counts["val_pairs"])  # only the kept pairs' (query, docid)s
    assert read_manifest(tmp_path / "out", "ddro")["config"]["max_pairs"] == 4
