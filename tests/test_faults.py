"""Faults: every long stage killed (SIGKILL) mid-way resumes to the output of an uninterrupted run;
a killed stage leaves nothing a later stage accepts; disk full, missing permissions and a missing
input give one clear line (exit 2) and no half-written output.

Kills are deterministic: the stage runs as a subprocess with DDRO_FAULT=<point>:<n>, which makes
`ddro.io.fault_point(<point>)` SIGKILL the process the n-th time it is reached ("train_step": the
end of a training step, before its checkpoint; "journal": a data stage's batch written but not yet
committed). Data stages whose resume unit (chunk) is larger than the tiny inputs run through
`python -c` with the chunk size lowered. Uninterrupted references run the same way, or in this
process single-threaded like the subprocesses (OMP_NUM_THREADS=1).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test_ddro
from ddro.errors import DDROError
from ddro.eval.evaluate import main as eval_main
from ddro.io import Journal
from ddro.manifest import read_manifest
from ddro.modeling import load_model
from ddro.train.ddro import main as ddro_main
from ddro.train.sft import main as sft_main
from model_fixtures import DOCS, docid_folder, tiny_bert_encoder
from test_ddro import PAIRS, VAL, negatives_folder
from test_sft import instances_folder, mean_loss

t5_ckpt = test_ddro.t5_ckpt  # a fixture: (a T5 "SFT checkpoint", its docid table)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def stage(module: str, args: list, fault: str | None = None, patch: str = "") -> subprocess.CompletedProcess:
    """Run `python -m module args` (or, with `patch`, the same main after `module.<patch>`)."""
    args = [str(a) for a in args]
    env = {k: v for k, v in ENV.items() if k != "DDRO_FAULT"}
    if fault:
        env["DDRO_FAULT"] = fault
    cmd = [sys.executable, "-m", module, *args] if not patch else \
        [sys.executable, "-c", f"import {module} as m; m.{patch}; m.main({args!r})"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, f"not killed (rc {proc.returncode}): {proc.stderr[-2000:]}"


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def in_process(main, args: list) -> None:
    """A stage's main in this process, single-threaded like the subprocesses (the reference runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


def refused(main, args: list, capsys, message: str) -> str:
    """The stage refuses with exit 2 and one line naming `message`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # beside progress bars
    assert e.value.code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    return errors[0]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_outputs(a: Path, b: Path) -> None:
    """Byte-identical folders, but for the output path in the manifests' config and command."""
    fa, fb = files(a), files(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        if name.endswith("manifest.json"):
            ma, mb = json.loads(fa[name]), json.loads(fb[name])
            for m in (ma, mb):
                m["config"] = {k: v for k, v in m["config"].items() if k not in ("out", "output_dir")}
                m.pop("command")
            assert ma == mb, name
        else:
            assert fa[name] == fb[name], name


def leftovers(parent: Path) -> list[str]:
    """Temporary outputs (`.<name>.tmp-*`) a stage left behind."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name)


# ----------------------------------------------------------------------------- training

def sft_argv(tmp: Path, table, instances: Path, out: Path) -> list:
    return ["--construction", "minilm-decoder", "--model_name_or_path", tmp / "bert", "--hidden_size", 32,
            "--intermediate_size", 64, "--decoder_layers", 1, "--num_heads", 2, "--instances", instances,
            "--docids", table.path, "--stages", 1, 2, "--stage_epochs", 4, 4, 1, "--per_device_train_batch_size", 4,
            "--learning_rate", 5e-3, "--save_steps", 3, "--save_total_limit", 2, "--logging_steps", 1,
            "--report_to", "none", "--disable_tqdm", "true", "--seed", 0, "--use_cpu", "true", "--output_dir", out]


def test_sft_killed_in_stage_2_resumes_to_the_uninterrupted_weights(tmp_path, capsys):
    tok = tiny_bert_encoder(tmp_path / "bert")
    table = docid_folder(tmp_path / "docids", DOCS)
    instances = instances_folder(tmp_path / "inst", table, tok, {1: 2, 2: 1, 3: 0})
    # stage 1: 12 instances, 3 steps x 4 epochs; stage 2: 6 instances, 2 steps x 4 epochs
    out = tmp_path / "out"
    killed(stage("ddro.train.sft", sft_argv(tmp_path, table, instances, out), fault="train_step:17"))
    # stage 1 finished; stage 2 was killed after its step 5 (last checkpoint: 3)
    assert (out / "stage1" / "manifest.json").is_file() and not (out / "stage2" / "manifest.json").exists()
    assert sorted(p.name for p in (out / "stage2" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3"]
    assert json.loads((out / "final.json").read_text())["complete"] is False
    with pytest.raises(DDROError, match="unfinished SFT run"):  # what `ddro train ddro` / `ddro eval` load
        load_model(out, docids=table)
    # a kill while the Trainer was saving: a newer checkpoint without its trainer_state.json
    half = out / "stage2" / "checkpoints" / "checkpoint-6"
    shutil.copytree(out / "stage2" / "checkpoints" / "checkpoint-3", half)
    (half / "trainer_state.json").unlink()
    stage1 = (out / "stage1" / "manifest.json").read_bytes()

    refused(sft_main, sft_argv(tmp_path, table, instances, out), capsys, "--resume")
    ok(stage("ddro.train.sft", [*sft_argv(tmp_path, table, instances, out), "--resume"]))
    in_process(sft_main, sft_argv(tmp_path, table, instances, tmp_path / "straight"))

    assert (out / "stage1" / "manifest.json").read_bytes() == stage1  # reused, not retrained
    training = read_manifest(out / "stage2")["training"]
    assert training["resumed_from"] == "checkpoint-3" and training["global_step"] == 8
    resumed, straight = load_model(out, docids=table), load_model(tmp_path / "straight", docids=table)
    assert resumed.path.name == "stage2"
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    loss = mean_loss(straight.model, tok, instances, table, stage=2)
    assert mean_loss(resumed.model, tok, instances, table, stage=2) == pytest.approx(loss, abs=1e-6)


def ddro_argv(tmp: Path, ckpt: Path, table, out: str, cache: str = "cache") -> list:
    # 12 pairs, batch 4: 3 steps per epoch, 8 steps cross two epochs (a reshuffle); linear decay and
    # AdamW: the scheduler and optimizer states must come back too. Reference pass: 4 rows a batch.
    # Checkpoints every 2 steps: the kill after step 5 resumes from step 4, in the middle of epoch 2.
    return ["--checkpoint", ckpt, "--docids", table.path, "--negatives", tmp / "neg", "--ref_cache_dir",
            tmp / cache, "--ref_batch_size", 4, "--output_dir", tmp / out, "--learning_rate", 3e-3, "--warmup_steps", 0,
            "--lr_scheduler_type", "linear", "--max_steps", 8, "--per_device_train_batch_size", 4,
            "--logging_steps", 1, "--save_strategy", "steps", "--save_steps", 2, "--eval_strategy", "no",
            "--use_cpu", "true", "--seed", 0, "--report_to", "none", "--disable_tqdm", "true"]


def test_ddro_killed_resumes_with_resume_to_the_uninterrupted_weights(t5_ckpt, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    ckpt, table = t5_ckpt
    negatives_folder(tmp_path / "neg", PAIRS, VAL)
    out, work = tmp_path / "out", tmp_path / "out.trainer"
    # killed in the reference pass (its 3rd batch written, not committed), then in training
    killed(stage("ddro.train.ddro", ddro_argv(tmp_path, ckpt, table, "out"), fault="journal:3"))
    partial = list((tmp_path / "cache").iterdir())
    assert [p.suffix for p in partial] == [".partial"]  # no reference cache file a rerun would trust
    assert json.loads((partial[0] / "state.json").read_text())["done"] > 0
    rerun = stage("ddro.train.ddro", ddro_argv(tmp_path, ckpt, table, "out"), fault="train_step:5")
    killed(rerun)
    assert "reference log-probs: resuming" in rerun.stderr
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".safetensors"]
    assert not out.exists() and not leftovers(tmp_path)
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # 4: mid-epoch
    with pytest.raises(DDROError, match="not a ddro checkpoint"):  # nothing for `ddro eval` to load
        load_model(out, docids=table)
    refused(ddro_main, ddro_argv(tmp_path, ckpt, table, "out"), capsys, "pass --resume")
    ok(stage("ddro.train.ddro", [*ddro_argv(tmp_path, ckpt, table, "out"), "--resume"]))
    in_process(ddro_main, ddro_argv(tmp_path, ckpt, table, "straight", cache="cache2"))
    # the resumed reference pass, exactly (the file's metadata order is not deterministic: compared as dicts)
    caches = [next((tmp_path / c).glob("*.safetensors")) for c in ("cache", "cache2")]
    assert caches[0].name == caches[1].name
    (ref, meta), (ref2, meta2) = [(load_file(str(c)), safe_open(str(c), "np").metadata()) for c in caches]
    assert meta == meta2 and ref.keys() == ref2.keys() and all(torch.equal(ref[k], ref2[k]) for k in ref)
    assert not work.exists()  # removed after success
    assert read_manifest(out, "ddro")["counts"]["steps"] == 8
    history = {name: json.loads((tmp_path / name / "log_history.json").read_text()) for name in ("out", "straight")}
    losses = {name: [e["loss"] for e in h if "loss" in e] for name, h in history.items()}
    assert len(losses["out"]) == len(losses["straight"]) == 8
    assert losses["out"] == pytest.approx(losses["straight"], abs=1e-6)
    resumed = load_file(str(out / "model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-6, rtol=0, msg=k)


# ----------------------------------------------------------------------------- negatives

def negatives_argv(coll: Path, out: Path) -> list:
    return ["--collection", coll, "--out", out, "--negatives", 4, "--bands", "1-10,11-30", "--val_fraction", 0.2,
            "--threads", 1]


def test_negatives_killed_mid_chunk_resume_to_identical_files(adi_train, tmp_path):
    small_chunks = "SEARCH_CHUNK = 8"  # 35 queries: 5 resumable chunks
    out = tmp_path / "neg"
    killed(stage("ddro.negatives", negatives_argv(adi_train, out), fault="journal:3", patch=small_chunks))
    assert not out.exists() and not leftovers(tmp_path)
    state = json.loads((tmp_path / ".neg.partial" / "state.json").read_text())
    assert state["done"] == 2  # chunk 3 was written, never committed
    assert (tmp_path / ".neg.partial" / "data").stat().st_size > state["bytes"]
    assert "after 2 of 5 chunks" in ok(stage("ddro.negatives", negatives_argv(adi_train, out), patch=small_chunks))
    assert not (tmp_path / ".neg.partial").exists()
    ok(stage("ddro.negatives", negatives_argv(adi_train, tmp_path / "straight"), patch=small_chunks))
    same_outputs(out, tmp_path / "straight")
    assert read_manifest(out)["counts"]["pairs"] == len((out / "pairs.tsv").read_text().splitlines())


def test_model_negatives_killed_mid_chunk_resume_to_identical_files(t5_ckpt, tmp_path):
    """The model source (beam search with a checkpoint) commits its own, smaller chunks: a kill loses one."""
    from test_negatives import model_collection

    ckpt, table = t5_ckpt
    coll, _, _ = model_collection(tmp_path)  # 8 training queries

    def argv(out):
        return ["--collection", coll, "--out", tmp_path / out, "--source", "model", "--checkpoint", ckpt,
                "--docids", table.path, "--bands", "1-2,3-5", "--negatives", 3, "--val_fraction", 0.25,
                "--batch_size", 2, "--device", "cpu"]

    small_chunks = "SOURCES['model'].chunk = 2"  # 4 resumable chunks
    killed(stage("ddro.negatives", argv("neg"), fault="journal:3", patch=small_chunks))
    assert not (tmp_path / "neg").exists() and not leftovers(tmp_path)
    assert json.loads((tmp_path / ".neg.partial" / "state.json").read_text())["done"] == 2
    assert "after 2 of 4 chunks" in ok(stage("ddro.negatives", argv("neg"), patch=small_chunks))
    ok(stage("ddro.negatives", argv("straight"), patch=small_chunks))
    same_outputs(tmp_path / "neg", tmp_path / "straight")
    assert read_manifest(tmp_path / "neg")["params"]["sources"]["model"]["decoding"]["beams"] == 5


def test_a_partial_run_with_other_settings_is_refused_not_mixed_in(adi_train, tmp_path):
    out = tmp_path / "neg"
    killed(stage("ddro.negatives", negatives_argv(adi_train, out), fault="journal:2", patch="SEARCH_CHUNK = 8"))
    other = stage("ddro.negatives", [*negatives_argv(adi_train, out), "--seed", 7], patch="SEARCH_CHUNK = 8")
    assert other.returncode == 2 and "unfinished run with other settings" in other.stderr.strip().splitlines()[-1]
    ok(stage("ddro.negatives", [*negatives_argv(adi_train, out), "--seed", 7, "--overwrite"], patch="SEARCH_CHUNK = 8"))
    assert read_manifest(out)["config"]["seed"] == 7


def test_journal_drops_what_follows_its_last_commit(tmp_path):
    j = Journal(tmp_path / "j", {"a": 1})
    j.append(b"one\n", 1, {"n": 1})
    j.append(b"two\n", 1, {"n": 2})
    with open(j.path, "ab") as f:
        f.write(b"half-written")  # a kill between writing and committing
    j = Journal(tmp_path / "j", {"a": 1})
    assert (j.done, j.stats, j.read_bytes()) == (2, {"n": 2}, b"one\ntwo\n")
    assert j.path.read_bytes() == b"one\ntwo\n"
    with pytest.raises(DDROError, match="other settings"):
        Journal(tmp_path / "j", {"a": 2})
    assert Journal(tmp_path / "j", {"a": 2}, overwrite=True).done == 0


# ----------------------------------------------------------------------------- evaluation, embedding, pseudo-queries

def test_eval_killed_mid_batch_resumes_to_an_identical_run(t5_ckpt, tmp_path):
    ckpt, table = t5_ckpt
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query_id": f"q{i}", "input_ids": [3 + i, 4 + (2 * i) % 15, 1],
                                           "relevant": {f"d{i}": 1}}) + "\n" for i in range(10)))

    def argv(out):
        return ["--model", ckpt, "--docids", table.path, "--test_file", queries, "--out", tmp_path / out,
                "--beams", 4, "--batch_size", 2, "--device", "cpu"]

    killed(stage("ddro.eval.evaluate", argv("run"), fault="journal:3"))  # 5 batches: 2 committed
    assert not (tmp_path / "run").exists() and not leftovers(tmp_path)
    assert json.loads((tmp_path / ".run.partial" / "state.json").read_text())["done"] == 4
    assert "after 4 queries" in ok(stage("ddro.eval.evaluate", argv("run")))
    assert not (tmp_path / ".run.partial").exists()
    in_process(eval_main, argv("straight"))
    same_outputs(tmp_path / "run", tmp_path / "straight")
    assert len((tmp_path / "run" / "run.trec").read_text().splitlines()) >= 10 * 4


def test_embedding_killed_mid_chunk_resumes_to_an_identical_cache(adi_train, tmp_path, monkeypatch):
    from ddro.docids import embed

    def argv(cache):
        return ["--collection", adi_train, "--embed_cache", tmp_path / cache, "--embed_max_length", 32,
                "--device", "cpu", "--embed_batch_size", 8]

    small_chunks = "CHUNK_DOCS = 16"  # 82 documents: 6 chunks
    killed(stage("ddro.docids.embed", argv("cache"), fault="journal:3", patch=small_chunks))
    partial = [p for p in (tmp_path / "cache").iterdir()]
    assert [p.suffix for p in partial] == [".partial"]  # no .npy/.json a `ddro docids` run would read
    assert json.loads((partial[0] / "state.json").read_text())["done"] == 32
    assert "after 32 documents" in ok(stage("ddro.docids.embed", argv("cache"), patch=small_chunks))
    monkeypatch.setattr(embed, "CHUNK_DOCS", 16)
    in_process(embed.main, argv("straight"))
    resumed, straight = files(tmp_path / "cache"), files(tmp_path / "straight")
    assert sorted(Path(n).suffix for n in resumed) == [".json", ".npy"]
    assert resumed == straight


def test_pseudo_queries_killed_mid_batch_resume_to_identical_files(shared_data, tmp_path, capsys):
    from ddro.negatives import main as negatives_main

    def argv(out):
        return ["--collection", shared_data / "adi", "--out", tmp_path / out, "--method", "spans", "--per_doc", 3,
                "--batch_size", 8]

    killed(stage("ddro.pseudo_queries", argv("pq"), fault="journal:4"))  # 11 batches: 3 committed
    assert not (tmp_path / "pq").exists() and (tmp_path / ".pq.partial").is_dir()
    refused(negatives_main, ["--collection", shared_data / "adi", "--out", tmp_path / "neg", "--queries", "pseudo",
                             "--pseudo_queries", tmp_path / "pq"], capsys, str(tmp_path / "pq"))
    assert "after 24 documents" in ok(stage("ddro.pseudo_queries", argv("pq")))
    ok(stage("ddro.pseudo_queries", argv("straight")))
    same_outputs(tmp_path / "pq", tmp_path / "straight")


# ----------------------------------------------------------------------------- disk full, permissions, missing input

def test_disk_full_while_writing_the_output_leaves_nothing_and_resumes(adi_train, tmp_path, monkeypatch, capsys,
                                                                       caplog):
    from ddro import negatives

    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.f.name)

    def full_open(path, mode="r", *args, **kw):
        f = real_open(path, mode, *args, **kw)
        return Full(f) if Path(path).name == "val_pairs.tsv" else f

    out = tmp_path / "neg"
    monkeypatch.setattr(negatives, "open", full_open, raising=False)
    err = refused(negatives.main, negatives_argv(adi_train, out), capsys, "No space left on device")
    assert "val_pairs.tsv" in err
    assert not out.exists() and not leftovers(tmp_path)
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="ddro")
    negatives.main([str(a) for a in negatives_argv(adi_train, out)])  # space again
    assert "after 1 of 1 chunks" in caplog.text  # the mined chunk is reused
    assert read_manifest(out)["counts"]["val_pairs"] > 0


def test_disk_full_in_the_journal_is_one_line_and_the_rerun_finishes(adi_train, tmp_path, monkeypatch, capsys):
    from ddro import io, negatives

    real_open, calls = open, []

    def full_on_second_append(path, mode="r", *args, **kw):
        if mode == "ab":
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(negatives, "SEARCH_CHUNK", 8)
    monkeypatch.setattr(io, "open", full_on_second_append, raising=False)
    out = tmp_path / "neg"
    refused(negatives.main, negatives_argv(adi_train, out), capsys, f"{tmp_path / '.neg.partial'}")
    assert not out.exists()
    monkeypatch.setattr(io, "open", real_open, raising=False)
    negatives.main([str(a) for a in negatives_argv(adi_train, out)])
    negatives.main([str(a) for a in negatives_argv(adi_train, tmp_path / "straight")])
    same_outputs(out, tmp_path / "straight")


def read_only(folder: Path, monkeypatch) -> None:
    """Make `folder` unwritable: chmod 0o500, or (root ignores permissions) refuse what writes into it."""
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        os.chmod(folder, 0o500)  # the test gives the permission back
        return
    import builtins

    def inside(path) -> bool:
        return Path(os.fspath(path)).resolve().is_relative_to(folder.resolve())

    def guard(real, name):
        def wrapped(path, *args, **kw):
            writes = name != "open" or any(c in (args[0] if args else kw.get("mode", "r")) for c in "wax+")
            if writes and inside(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kw)
        return wrapped

    for module, name in ((os, "mkdir"), (os, "replace"), (os, "rename"), (builtins, "open")):
        monkeypatch.setattr(module, name, guard(getattr(module, name), name))


def test_read_only_output_folder_is_one_line_naming_it(adi_train, tmp_path, monkeypatch, capsys):
    from ddro.negatives import main as negatives_main

    locked = tmp_path / "locked"
    read_only(locked, monkeypatch)
    try:
        err = refused(negatives_main, negatives_argv(adi_train, locked / "neg"), capsys, "Permission denied")
    finally:
        monkeypatch.undo()
        os.chmod(locked, 0o700)
    assert str(locked) in err
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("module, argv", [
    ("ddro.negatives", ["--collection", "{missing}", "--out", "{tmp}/out"]),
    ("ddro.pseudo_queries", ["--collection", "{missing}", "--out", "{tmp}/out", "--method", "spans"]),
    ("ddro.docids.embed", ["--collection", "{missing}", "--embed_cache", "{tmp}/out"]),
    ("ddro.eval.evaluate", ["--model", "{tmp}", "--docids", "{missing}", "--test_file", "{missing}",
                            "--out", "{tmp}/out"]),
    ("ddro.train.sft", ["--construction", "minilm-decoder", "--model_name_or_path", "{tmp}", "--instances",
                        "{missing}", "--docids", "{missing}", "--output_dir", "{tmp}/out", "--report_to", "none"]),
    ("ddro.train.ddro", ["--checkpoint", "{tmp}", "--docids", "{missing}", "--negatives", "{missing}",
                         "--output_dir", "{tmp}/out", "--report_to", "none"]),
])
def test_missing_input_is_one_line_naming_it_and_writes_nothing(module, argv, tmp_path, capsys):
    import importlib

    missing = tmp_path / "nowhere" / "input"
    args = [a.format(missing=missing, tmp=tmp_path) for a in argv]
    refused(importlib.import_module(module).main, args, capsys, str(missing))
    assert not (tmp_path / "out").exists()
