"""Several processes: torchrun (2 CPU ranks, gloo) for SFT, DDRO and evaluation; SLURM-style shards."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

import test_ddro
import test_pseudo_queries
from ddro.distributed import Shard, ShardSet, plan_shard
from ddro.errors import DDROError
from ddro.io import dumps_line
from ddro.manifest import read_manifest
from ddro.modeling import load_model
from model_fixtures import DOCS, WORDS
from test_ddro import PAIRS, VAL, negatives_folder
from test_sft import instances_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
t5_ckpt = test_ddro.t5_ckpt  # fixtures shared with the single-process tests
tiny_doc2query = test_pseudo_queries.tiny_doc2query
for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DDRO_NUM_SHARDS", "DDRO_SHARD_INDEX"):
    ENV.pop(name, None)


def launch(module: str, args: list[str], nproc: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args`, or the same under `torchrun --standalone --nproc_per_node nproc`."""
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run([*prefix, "-m", module, *map(str, args)], env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


# ---------------------------------------------------------------- helpers
def test_shards_are_contiguous_and_cover_everything_once():
    for n in (0, 1, 5, 7, 16):
        for k in (1, 2, 3, 5):
            blocks = [Shard(i, k).block(n) for i in range(k)]
            assert [u for b in blocks for u in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_plan_shard_combines_array_tasks_and_torchrun_ranks(monkeypatch):
    monkeypatch.setenv("DDRO_NUM_SHARDS", "3")
    monkeypatch.setenv("DDRO_SHARD_INDEX", "2")
    assert plan_shard() == Shard(2, 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert plan_shard() == Shard(5, 6) and plan_shard(1, 0) == Shard(1, 2)
    with pytest.raises(DDROError, match="shard 3 of 3"):
        plan_shard(3, 3)


def test_shard_set_completes_once_and_ignores_other_settings(tmp_path):
    a, other = ShardSet(tmp_path / "out", {"x": 1}, 2, "txt"), ShardSet(tmp_path / "out", {"x": 2}, 2, "txt")
    for s in other.shards():
        with other.writing(s) as f:
            f.write("stale")
        other.finish(s)
    with a.writing(Shard(0, 2)) as f:
        f.write("zero")
    a.finish(Shard(0, 2))
    assert a.missing() == [1] and not a.claim_merge()
    with a.writing(Shard(1, 2)) as f:
        f.write("one")
    a.finish(Shard(1, 2), rows=1)
    assert a.require_complete()[1]["rows"] == 1
    assert a.claim_merge() and not a.claim_merge()  # exactly one merger
    a.cleanup()
    assert other.missing() == [] and not a.payload(Shard(0, 2)).exists()


# ---------------------------------------------------------------- evaluation
def eval_file(path, table, tokenizer, n: int):
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(2 + i % 4))
            f.write(dumps_line({"query_id": f"q{i}", "input_ids": tokenizer(text).input_ids,
                                "relevant": {table.doc_ids[i % len(table)]: 1}}))
    return path


def test_sharded_evaluation_equals_one_process(t5_ckpt, tmp_path, monkeypatch):
    from ddro.eval.evaluate import main

    ckpt, table = t5_ckpt
    queries = eval_file(tmp_path / "test.jsonl", table, load_model(ckpt, table).tokenizer, 11)
    common = ["--model", ckpt, "--docids", table.path, "--test_file", queries, "--beams", 4, "--batch_size", 2,
              "--device", "cpu"]
    main(list(map(str, [*common, "--out", tmp_path / "single"])))
    launch("ddro.eval.evaluate", [*common, "--out", tmp_path / "ranks"], nproc=2)
    for i in (2, 0):  # SLURM-style tasks, from the environment; the last one to finish merges
        monkeypatch.setenv("DDRO_NUM_SHARDS", "3")
        monkeypatch.setenv("DDRO_SHARD_INDEX", str(i))
        main(list(map(str, [*common, "--out", tmp_path / "array"])))
        assert (tmp_path / "array.shards").is_dir() and not (tmp_path / "array").exists()
    monkeypatch.delenv("DDRO_NUM_SHARDS")
    main(list(map(str, [*common, "--out", tmp_path / "array", "--num_shards", 3, "--shard_index", 1])))
    single = (tmp_path / "single" / "run.trec").read_bytes()
    assert len(single.splitlines()) >= 11 * 4
    for name in ("ranks", "array"):
        assert (tmp_path / name / "run.trec").read_bytes() == single, name
        assert (tmp_path / name / "metrics.json").read_bytes() == (tmp_path / "single" / "metrics.json").read_bytes()
        assert read_manifest(tmp_path / name, "run")["config"] == {
            **read_manifest(tmp_path / "single", "run")["config"], "out": str(tmp_path / name)}
        assert not (tmp_path / f"{name}.shards").exists()


# ---------------------------------------------------------------- training
def test_sft_trains_under_torchrun(tmp_path):
    from model_fixtures import docid_folder, tiny_bert_encoder

    tok = tiny_bert_encoder(tmp_path / "bert")
    table = docid_folder(tmp_path / "docids", DOCS)
    instances = instances_folder(tmp_path / "inst", table, tok, {1: 2, 2: 1, 3: 0})
    out = tmp_path / "sft"
    launch("ddro.train.sft", [
        "--instances", instances, "--docids", table.path, "--construction", "minilm-decoder",
        "--model_name_or_path", tmp_path / "bert", "--hidden_size", 32, "--intermediate_size", 64,
        "--decoder_layers", 1, "--num_heads", 2, "--stages", 1, 2, "--stage_epochs", 1, 1, 1,
        "--per_device_train_batch_size", 3, "--max_steps", 2, "--output_dir", out, "--report_to", "none",
        "--disable_tqdm", "true"], nproc=2)
    for stage in (1, 2):
        manifest = read_manifest(out / f"stage{stage}", "sft_stage")
        assert manifest["training"]["world_size"] == 2 and manifest["training"]["global_step"] == 2
    assert load_model(out, docids=table).info["construction"] == "minilm-decoder"


def test_ddro_trains_under_torchrun(t5_ckpt, tmp_path):
    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    out = tmp_path / "ddro"
    launch("ddro.train.ddro", [
        "--checkpoint", ckpt, "--docids", table.path, "--negatives", tmp_path / "neg", "--output_dir", out,
        "--ref_cache_dir", tmp_path / "cache", "--max_steps", 2, "--per_device_train_batch_size", 3,
        "--warmup_steps", 0, "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true",
        "--eval_strategy", "steps", "--eval_steps", 2], nproc=2)
    manifest = read_manifest(out, "ddro")
    assert manifest["counts"]["steps"] == 2 and manifest["world_size"] == 2
    history = json.loads((out / "log_history.json").read_text())
    assert history[-1]["epoch"] == 1.0  # 2 steps x 2 ranks x 3 pairs = the 12 training pairs once
    assert len(list((tmp_path / "cache").glob("ref-*.safetensors"))) == 1
    assert load_model(out, docids=table).model is not None
    assert not (tmp_path / "ddro.trainer").exists()


def test_ddro_listwise_under_torchrun_gathers_groups_of_different_sizes(t5_ckpt, tmp_path):
    """Each rank's groups have another number of negatives: the logged metrics pad and gather them."""
    ckpt, table = t5_ckpt
    pairs = [(f"q{i}", f"d{i}", f"d{(i + k) % 12}") for i, n in enumerate((3, 1, 2, 1)) for k in range(3, 3 + n)]
    negatives_folder(tmp_path / "neg", pairs, VAL)
    out = tmp_path / "ddro"
    launch("ddro.train.ddro", [
        "--checkpoint", ckpt, "--docids", table.path, "--negatives", tmp_path / "neg", "--output_dir", out,
        "--ref_cache_dir", tmp_path / "cache", "--max_steps", 2, "--per_device_train_batch_size", 1,
        "--warmup_steps", 0, "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true",
        "--logging_steps", 1, "--eval_strategy", "steps", "--eval_steps", 2, "--loss_type", "listwise"], nproc=2)
    manifest = read_manifest(out, "ddro")
    assert manifest["counts"]["train_groups"] == 4 and manifest["world_size"] == 2
    history = json.loads((out / "log_history.json").read_text())
    assert history[-1]["epoch"] == 1.0  # 2 steps x 2 ranks x 1 group = the 4 groups once
    train = [h for h in history if "loss" in h]
    assert len(train) == 2 and train[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert all(h[k] < 0 for h in train for k in ("logps/chosen", "logps/rejected"))
    assert any("eval_logps/rejected" in h for h in history)


# ---------------------------------------------------------------- pseudo-queries
def test_sharded_doc2query_equals_one_process(tmp_path, tiny_doc2query):
    from ddro import pseudo_queries as pq
    from test_pseudo_queries import d2q_args, make_collection, make_docs

    coll = make_collection(tmp_path / "c", make_docs(7))  # 4 batches of 2 over 3 shards: 2, 1, 1
    single = pq.run(d2q_args(coll, tmp_path / "single", tiny_doc2query))
    for i in (1, 2):
        assert pq.run(d2q_args(coll, tmp_path / "sharded", tiny_doc2query, num_shards=3, shard_index=i)) == {}
    assert not (tmp_path / "sharded").exists()
    with pytest.raises(DDROError, match="shard.* 0 of 3 missing"):
        pq.run(d2q_args(coll, tmp_path / "sharded", tiny_doc2query, num_shards=3, merge_shards=True))
    merged = pq.run(d2q_args(coll, tmp_path / "sharded", tiny_doc2query, num_shards=3, shard_index=0))
    assert (tmp_path / "sharded" / pq.FILE).read_bytes() == (tmp_path / "single" / pq.FILE).read_bytes()
    assert merged["counts"] == single["counts"] and merged["config"]["out"] == str(tmp_path / "sharded")
    assert not (tmp_path / "sharded.shards").exists()


# ---------------------------------------------------------------- embeddings
def test_sharded_embeddings_equal_one_process(tmp_path, monkeypatch):
    import numpy as np

    from ddro.data.collection import Collection
    from ddro.docids import embed
    from test_docids import make_collection
    from test_pseudo_queries import make_docs

    monkeypatch.setattr(embed, "CHUNK_DOCS", 2)  # 7 documents: 4 chunks over 3 shards
    monkeypatch.setattr(embed, "load_embedder", functools.lru_cache(embed.load_embedder))  # load once
    coll = make_collection(tmp_path / "c", make_docs(7))
    single, info = embed.embed_collection(Collection(coll), "offline:minilm", ["title", "text"], tmp_path / "one")
    args = ["--collection", str(coll), "--embed_cache", str(tmp_path / "sharded"), "--num_shards", "3"]
    for i in (2, 0):
        assert embed.run(embed.parse_args([embed.EmbedArguments], [*args, "--shard_index", str(i)])[0]) is None
    vectors, merged_info = embed.run(embed.parse_args([embed.EmbedArguments], [*args, "--shard_index", "1"])[0])
    assert np.array_equal(vectors, single) and merged_info == info
    names = {part: sorted(p.name for p in (tmp_path / part).iterdir()) for part in ("sharded", "one")}
    assert names["sharded"] == names["one"]
    for p in (tmp_path / "one").iterdir():
        assert p.read_bytes() == (tmp_path / "sharded" / p.name).read_bytes()
