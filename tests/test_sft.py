"""Phase-1 SFT: data, collator, stage chain, resume, skipped stages, on a tiny BERT encoder."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ddro.errors import DDROError, InputError
from ddro.io import dumps_line
from ddro.manifest import manifest_hash, read_manifest, write_manifest
from ddro.modeling import build_model, load_model
from ddro.padding import IGNORE
from ddro.tokenizer import tokenizer_identity
from ddro.train.arguments import DataArguments, ModelArguments, SftArguments, SftTrainingArguments
from ddro.train.data import InstanceDataset, Seq2SeqCollator, _ragged, read_instances
from ddro.train.sft import encoder_only_parameters, main, run, verify_init
from model_fixtures import DOCS, WORDS, docid_folder, tiny_bert_encoder


# ---------------------------------------------------------------- fixtures
def doc_text(i: int, variant: int) -> str:
    return " ".join(WORDS[(i * 3 + variant + j) % len(WORDS)] for j in range(4 + variant))


def instances_folder(folder, table, tokenizer, per_stage=None):
    """stage{1,2,3}.jsonl in the documented format; per_stage[s] = instances per document (0: empty)."""
    per_stage = per_stage or {1: 2, 2: 1, 3: 1}
    folder.mkdir(parents=True)
    sources = {1: "passage", 2: "pseudo", 3: "query"}
    for stage, n in per_stage.items():
        with open(folder / f"stage{stage}.jsonl", "w") as f:
            for i, doc_id in enumerate(table.doc_ids):
                for v in range(n):
                    ids = tokenizer(doc_text(i, v + stage)).input_ids
                    f.write(dumps_line({"doc_id": doc_id, "input_ids": ids, "labels": list(table.by_doc[doc_id]),
                                        "source": sources[stage]}))
    write_manifest(folder, "instances", counts={f"stage{s}": n * len(table) for s, n in per_stage.items()},
                   tokenizer=tokenizer_identity(tokenizer), docids=manifest_hash(table.path), command=["test"])
    return folder


@pytest.fixture
def setup(tmp_path):
    tok = tiny_bert_encoder(tmp_path / "bert")
    table = docid_folder(tmp_path / "docids", DOCS)
    return tmp_path, tok, table


def arguments(tmp, table, instances, out, *, stages=(1, 2, 3), **sft):
    model = ModelArguments("minilm-decoder", str(tmp / "bert"), hidden_size=32, intermediate_size=64,
                           decoder_layers=1, num_heads=2)
    data = DataArguments(instances=str(instances), docids=str(table.path), stages=list(stages))
    training_kw = {k: sft.pop(k) for k in list(sft) if k in ("save_steps", "save_total_limit", "learning_rate")}
    sft_args = SftArguments(**{"stage_epochs": [1.0, 1.0, 1.0], **sft})
    training = SftTrainingArguments(output_dir=str(out), report_to="none", per_device_train_batch_size=4,
                                    logging_steps=1, disable_tqdm=True, seed=0,
                                    **{"learning_rate": 5e-3, "save_steps": 1000, **training_kw})
    return model, data, sft_args, training


def mean_loss(model, tokenizer, instances, table, stage=3):
    data = read_instances(instances / f"stage{stage}.jsonl", table)
    batch = Seq2SeqCollator(tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


# ---------------------------------------------------------------- data
def test_collator_pads_labels_with_minus_100_and_inputs_with_pad():
    batch = Seq2SeqCollator(pad_token_id=7)([{"input_ids": [5, 6, 8], "labels": [3, 4]},
                                             {"input_ids": [9], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 8], [9, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[3, 4], [5, IGNORE]]
    assert IGNORE == -100


def test_read_instances_checks_labels_against_docid_table(setup):
    tmp, tok, table = setup
    folder = instances_folder(tmp / "inst", table, tok)
    data = read_instances(folder / "stage1.jsonl", table, part=1)
    assert len(data) == 2 * len(DOCS)
    assert data[0]["labels"] == list(table.by_doc["d0"])
    assert data.counts["stage1"]["sources"] == {"passage": 12}
    lines = (folder / "stage1.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["labels"] = list(table.by_doc["d5"])
    (folder / "stage1.jsonl").write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    with pytest.raises(InputError, match=r"stage1.jsonl:2: labels .* not document 'd0'"):
        read_instances(folder / "stage1.jsonl", table)
    assert len(read_instances(folder / "missing.jsonl", table)) == 0


def test_read_instances_truncates_to_max_source_length(setup):
    tmp, tok, table = setup
    folder = instances_folder(tmp / "inst", table, tok)
    data = read_instances(folder / "stage1.jsonl", table, part=1, max_source_length=3)
    assert max(len(data[i]["input_ids"]) for i in range(len(data))) == 3
    assert data.counts["stage1"]["truncated"] == len(data)


def test_resampled_mix_repeats_and_redraws_fractions(setup):
    tmp, tok, table = setup
    folder = instances_folder(tmp / "inst", table, tok, {1: 4, 2: 1, 3: 1})
    base = InstanceDataset.concat([read_instances(folder / f"stage{s}.jsonl", table, part=s) for s in (1, 3)])
    mix = base.resampled({1: 0.5, 3: 2.0}, epochs=3, seed=0)
    epochs = base.parts[mix.index].reshape(3, 24)  # per epoch: half of stage 1 (12), stage 3 twice (12)
    assert ((epochs == 1).sum(axis=1) == 12).all() and ((epochs == 3).sum(axis=1) == 12).all()
    halves = [set(mix.index[i * 24:(i + 1) * 24][epochs[i] == 1]) for i in range(3)]
    assert all(len(h) == 12 for h in halves) and len(set.union(*halves)) > 12  # redrawn each epoch
    assert not (epochs[0] == np.sort(epochs[0])).all()  # shuffled within the epoch
    assert np.array_equal(mix.index, base.resampled({1: 0.5, 3: 2.0}, epochs=3, seed=0).index)
    assert mix[0] == base[int(mix.index[0])]


def test_group_by_length_keeps_each_epoch_and_batches_similar_lengths():
    rng = np.random.default_rng(0)
    seqs = [list(range(1, int(n) + 1)) for n in rng.choice([4, 64], size=400)]   # queries and passages
    values, offsets = _ragged(seqs)
    base = InstanceDataset(values, offsets, values, offsets, np.ones(400, dtype=np.int8))
    plain = base.resampled({1: 1.0}, epochs=2, seed=3)
    grouped = base.resampled({1: 1.0}, epochs=2, seed=3, group_batch=8)
    for e in range(2):  # every epoch holds the same instances, in another order
        assert sorted(grouped.index[e * 400:(e + 1) * 400]) == sorted(plain.index[e * 400:(e + 1) * 400])
    lengths = np.diff(offsets)

    def padded_tokens(index):
        return sum(8 * lengths[index[i:i + 8]].max() for i in range(0, len(index), 8))

    assert padded_tokens(grouped.index) < 0.7 * padded_tokens(plain.index)
    batch_starts = lengths[grouped.index[::8]]
    assert len(set(batch_starts[:20].tolist())) == 2  # short and long batches are interleaved
    assert np.array_equal(grouped.index, base.resampled({1: 1.0}, epochs=2, seed=3, group_batch=8).index)


# ---------------------------------------------------------------- stage chain
def test_sequential_run_skips_empty_stage_and_chains_checkpoints(setup):
    tmp, tok, table = setup
    instances = instances_folder(tmp / "inst", table, tok, {1: 2, 2: 0, 3: 1})
    out = tmp / "out"
    last = run(*arguments(tmp, table, instances, out, stage_epochs=[3.0, 3.0, 3.0]))
    assert last == out / "stage3"
    assert sorted(p.name for p in out.iterdir()) == ["final.json", "stage1", "stage3"]
    m1, m3 = read_manifest(out / "stage1", "sft_stage"), read_manifest(out / "stage3", "sft_stage")
    assert m1["stage"] == 1 and m1["init"]["stage"] == 0 and m1["inputs"]["init"] is None
    assert m3["stage"] == 3 and m3["skipped"] == [2]
    assert m3["init"]["stage"] == 1 and m3["inputs"]["init"] == manifest_hash(out / "stage1")
    assert m3["inputs"]["docids"] == manifest_hash(table.path)
    assert m3["training"]["global_step"] == 3 * 2  # 6 instances, batch 4, 3 epochs
    assert "checkpoints/" not in " ".join(m3["files"])
    pointer = json.loads((out / "final.json").read_text())
    assert pointer["folder"] == "stage3" and pointer["complete"]
    # the trained model fits the queries better than a fresh one
    final = load_model(out, docids=table)
    assert final.path == out / "stage3"
    fresh = build_model(arguments(tmp, table, instances, tmp)[0], table, seed=0).model
    assert mean_loss(final.model, final.tokenizer, instances, table) < 0.8 * mean_loss(fresh, tok, instances, table)


def test_stage_refuses_init_from_the_wrong_stage(setup):
    tmp, tok, table = setup
    instances = instances_folder(tmp / "inst", table, tok)
    run(*arguments(tmp, table, instances, tmp / "out", stages=(1,)))
    # the reference implementation's bug: stage 3 started from the stage-1 checkpoint
    with pytest.raises(DDROError, match=r"stage 3 must start from stage 2's checkpoint, but .*stage1 is stage 1"):
        run(*arguments(tmp, table, instances, tmp / "out3", stages=(3,), init_from=str(tmp / "out" / "stage1")))
    with pytest.raises(DDROError, match=r"stage 3 must start from stage 2's checkpoint"):  # via final.json
        run(*arguments(tmp, table, instances, tmp / "out3", stages=(3,), init_from=str(tmp / "out")))
    # stage 2 from the stage-1 checkpoint is the chain
    run(*arguments(tmp, table, instances, tmp / "out2", stages=(2,), init_from=str(tmp / "out" / "stage1")))
    assert read_manifest(tmp / "out2" / "stage2")["init"]["stage"] == 1
    assert not (tmp / "out3").exists() or not any((tmp / "out3").glob("stage*"))


def test_verify_init_rules(setup, tmp_path):
    _, _, table = setup
    h = manifest_hash(table.path)
    stage = tmp_path / "s2"
    stage.mkdir()
    write_manifest(stage, "sft_stage", stage=2, inputs={"docids": h}, command=["test"])
    assert verify_init(3, stage, [], h)["stage"] == 2
    assert verify_init(1, None, [], h)["stage"] == 0
    with pytest.raises(DDROError, match="stage 2 must start from stage 1"):
        verify_init(2, None, [], h)
    with pytest.raises(DDROError, match="stage 2 must start"):
        verify_init(2, stage, [], h)  # a stage-2 checkpoint cannot start stage 2 again
    assert verify_init(2, None, [1], h)["stage"] == 0  # stage 1 had no instances
    with pytest.raises(DDROError, match="another docid table"):
        verify_init(3, stage, [], "0" * 64)


def test_existing_output_needs_resume_or_overwrite_and_resume_reuses_stages(setup):
    tmp, tok, table = setup
    instances = instances_folder(tmp / "inst", table, tok)
    out = tmp / "out"
    run(*arguments(tmp, table, instances, out, stages=(1,)))
    before = (out / "stage1" / "manifest.json").read_bytes()
    with pytest.raises(DDROError, match="--resume"):
        run(*arguments(tmp, table, instances, out, stages=(1, 2)))
    with pytest.raises(DDROError, match=r"other settings \(epochs\)"):
        run(*arguments(tmp, table, instances, out, stages=(1, 2), resume=True, stage_epochs=[2.0, 1.0, 1.0]))
    # stage 2's own settings may differ: stage 1 is still reused
    run(*arguments(tmp, table, instances, out, stages=(1, 2), resume=True, stage_epochs=[1.0, 2.0, 3.0]))
    assert (out / "stage1" / "manifest.json").read_bytes() == before  # reused, not retrained
    assert read_manifest(out / "stage2")["inputs"]["init"] == manifest_hash(out / "stage1")
    run(*arguments(tmp, table, instances, out, stages=(1,), overwrite=True))
    assert not (out / "stage2").exists()


def test_resume_from_checkpoint_matches_uninterrupted_run(setup):
    tmp, tok, table = setup
    instances = instances_folder(tmp / "inst", table, tok)
    full = tmp / "full"
    run(*arguments(tmp, table, instances, full, stages=(1,), save_steps=3, save_total_limit=None,
                   stage_epochs=[3.0, 3.0, 3.0]))
    ckpts = sorted(p.name for p in (full / "stage1" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    # an interrupted run: only its stage's checkpoints up to step 6 exist
    crashed = tmp / "crashed"
    (crashed / "stage1" / "checkpoints").mkdir(parents=True)
    for name in ckpts[:2]:
        shutil.copytree(full / "stage1" / "checkpoints" / name, crashed / "stage1" / "checkpoints" / name)
    shutil.copy(full / "stage1" / "checkpoints" / "ddro_run.json", crashed / "stage1" / "checkpoints")
    with pytest.raises(DDROError, match=r"checkpoints: trained with other settings \(learning_rate\)"):
        run(*arguments(tmp, table, instances, crashed, stages=(1,), save_steps=3, save_total_limit=None,
                       resume=True, learning_rate=1e-3, stage_epochs=[3.0, 3.0, 3.0]))
    run(*arguments(tmp, table, instances, crashed, stages=(1,), save_steps=3, save_total_limit=None, resume=True,
                   stage_epochs=[3.0, 3.0, 3.0]))
    m = read_manifest(crashed / "stage1")
    assert m["training"]["resumed_from"] == "checkpoint-6" and m["training"]["global_step"] == 9
    a = load_model(full / "stage1").model.state_dict()
    b = load_model(crashed / "stage1").model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_mixed_schedule_trains_one_resampled_run(setup):
    tmp, tok, table = setup
    instances = instances_folder(tmp / "inst", table, tok)
    out = tmp / "out"
    last = run(*arguments(tmp, table, instances, out, schedule="mixed", mix_epochs=1, mix_repeats=[0.5, 1.0, 2.0]))
    assert last == out / "mixed"
    m = read_manifest(out / "mixed", "sft_stage")
    assert m["counts"]["instances"] == 6 + 6 + 12
    assert json.loads((out / "final.json").read_text())["folder"] == "mixed"
    # same inputs and seed: byte-identical stage folder (the manifest's file hashes)
    run(*arguments(tmp, table, instances, tmp / "again", schedule="mixed", mix_epochs=1,
                   mix_repeats=[0.5, 1.0, 2.0]))
    assert read_manifest(tmp / "again" / "mixed")["files"] == m["files"]


def test_instances_for_another_docid_table_are_refused(setup):
    tmp, tok, table = setup
    instances = instances_folder(tmp / "inst", table, tok)
    other = docid_folder(tmp / "docids2", DOCS, tokens=[(3 + i % 4, 8) for i in range(6)])
    with pytest.raises(DDROError, match="another docid table"):
        run(*arguments(tmp, other, instances, tmp / "out"))


def test_encoder_learning_rate_makes_param_groups(setup):
    from ddro.train.sft import SftTrainer

    tmp, tok, table = setup
    model_args, *_, training = arguments(tmp, table, tmp, tmp / "out")
    model = build_model(model_args, table).model
    enc = encoder_only_parameters(model)
    assert {id(p) for p in model.encoder.parameters()} == enc
    assert not enc & {id(p) for p in model.decoder.parameters()}
    trainer = SftTrainer(model=model, args=training, encoder_learning_rate=1e-4)
    opt = trainer.create_optimizer()
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {lrs[id(p)] for p in model.encoder.parameters()} == {1e-4}
    assert {lrs[id(p)] for p in model.decoder.parameters()} == {training.learning_rate}


def test_encoder_only_parameters_exclude_t5_shared_embedding(tmp_path):
    from model_fixtures import small_args, t5_tokenizer

    tok = t5_tokenizer(tmp_path / "tok")
    table = docid_folder(tmp_path / "d", DOCS, target_vocab="tokenizer", vocab_offset=len(tok), tokenizer=tok)
    model = build_model(small_args("t5-scratch", tmp_path / "tok"), table).model
    enc = encoder_only_parameters(model)
    assert id(model.shared.weight) not in enc
    assert id(model.encoder.block[0].layer[0].SelfAttention.q.weight) in enc


def test_cli_with_yaml_config(setup, capsys):
    tmp, tok, table = setup
    instances = instances_folder(tmp / "inst", table, tok, {1: 1, 2: 0, 3: 0})
    config = tmp / "sft.yaml"
    config.write_text(f"construction: minilm-decoder\nmodel_name_or_path: {tmp / 'bert'}\nhidden_size: 32\n"
                      f"intermediate_size: 64\ndecoder_layers: 1\nnum_heads: 2\ninstances: {instances}\n"
                      f"docids: {table.path}\nstage_epochs: [1, 1, 1]\nreport_to: none\n"
                      f"output_dir: {tmp / 'out'}\ndisable_tqdm: true\n")
    main(["--config", str(config)])
    assert "final model:" in capsys.readouterr().out
    assert read_manifest(tmp / "out" / "stage1")["config"]["stage_epochs"] == [1.0, 1.0, 1.0]
    with pytest.raises(SystemExit) as e:
        main(["--config", str(config)])  # exists: refused with one line
    assert e.value.code == 2
    assert "--resume" in capsys.readouterr().err


def test_t5_construction_trains_through_the_trainer(tmp_path):
    from model_fixtures import tiny_pretrained_t5

    tok = tiny_pretrained_t5(tmp_path / "t5")
    table = docid_folder(tmp_path / "docids", DOCS, target_vocab="tokenizer", vocab_offset=len(tok), tokenizer=tok)
    instances = instances_folder(tmp_path / "inst", table, tok, {1: 2, 2: 0, 3: 0})
    model, data, sft, training = arguments(tmp_path, table, instances, tmp_path / "out", stages=(1,),
                                           save_steps=3, learning_rate=1e-2, stage_epochs=[3.0, 1.0, 1.0])
    model = ModelArguments("t5", str(tmp_path / "t5"))
    run(model, data, sft, training)
    loaded = load_model(tmp_path / "out", docids=table)
    assert loaded.info["construction"] == "t5" and loaded.info["new_head"]
    assert loaded.model.lm_head.weight is not loaded.model.shared.weight
    fresh = build_model(model, table, seed=0).model
    assert mean_loss(loaded.model, tok, instances, table, stage=1) < mean_loss(fresh, tok, instances, table, stage=1)
