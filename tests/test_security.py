"""Security: weights only from safetensors, no remote code, no paths smuggled in through configs."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
import yaml

from ddro.errors import DDROError
from ddro.modeling import build_model, load_model, save_model
from ddro.pipeline import main as pipeline_main
from model_fixtures import DOCS, docid_folder, small_args, tiny_bert_encoder

SRC = Path(__file__).resolve().parents[1] / "src" / "ddro"


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    table = docid_folder(root / "docids", DOCS)
    tiny_bert_encoder(root / "encoder")
    built = build_model(small_args("minilm-decoder", root / "encoder"), table)
    save_model(built.model, built.tokenizer, built.info, table, root / "ckpt")
    return root


def test_a_pickled_checkpoint_is_refused_not_loaded(checkpoint, tmp_path, monkeypatch):
    """Only pytorch_model.bin: refused with a clear error before anything is unpickled."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in (checkpoint / "ckpt").iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import load_file
    torch.save(load_file(checkpoint / "ckpt" / "model.safetensors"), folder / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a checkpoint")
    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(DDROError, match="model.safetensors"):
        load_model(folder, checkpoint / "docids")


def test_a_checkpoint_with_both_formats_loads_the_safetensors(checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in (checkpoint / "ckpt").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: loading it would fail")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    loaded = load_model(folder, checkpoint / "docids")
    assert loaded.path == folder


# ----------------------------------------------------------------------------- static guard on src/

# model classes whose from_pretrained reads weights (tokenizers and configs read no pickles)
WEIGHT_LOADER = re.compile(r"^(AutoModel\w*|\w+For\w+|\w*Model)$")
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle"}


def _literal(call: ast.Call, name: str):
    """The keyword's value when it is a literal, `...` when it is an expression, None when absent."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else ...
    return None


def scan_sources() -> list[str]:
    """Every call in src/ that could unpickle or run downloaded code (comments and docstrings aside)."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n.split(".")[0] in PICKLERS for n in names):
                    problems.append(f"{where}:{node.lineno}: imports a pickle module")
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            callee = func.rsplit(".", 2)[-2] if func.count(".") else ""
            if _literal(node, "trust_remote_code") not in (None, False):
                problems.append(f"{where}:{node.lineno}: trust_remote_code not literally False")
            pickles = _literal(node, "weights_only") not in (None, True)
            if pickles or _literal(node, "allow_pickle") not in (None, False):
                problems.append(f"{where}:{node.lineno}: weights_only/allow_pickle allowing pickles")
            if func == "torch.load" and _literal(node, "weights_only") is not True:
                problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if func.endswith(".from_pretrained") and WEIGHT_LOADER.match(callee) and \
                    _literal(node, "use_safetensors") is not True and _literal(node, "weights_only") is not True:
                problems.append(f"{where}:{node.lineno}: {func} without use_safetensors=True or weights_only=True")
    return problems


def test_src_never_unpickles_or_runs_remote_code():
    assert scan_sources() == []


def test_the_static_guard_catches_what_it_should(tmp_path, monkeypatch):
    bad = tmp_path / "ddro"
    bad.mkdir()
    (bad / "bad.py").write_text("import pickle\nx = torch.load(\n    path)\ny = torch.load(p, weights_only=True)\n"
                                "m = AutoModelForSeq2SeqLM.from_pretrained(p)\n"
                                "t = AutoTokenizer.from_pretrained(p, trust_remote_code=True)\n"
                                "ok = AutoModel.from_pretrained(p, use_safetensors=True)\n")
    monkeypatch.setattr(__import__(__name__), "SRC", bad)
    found = sorted(scan_sources())
    assert [f.split(": ", 1)[0].rsplit(":", 1)[1] for f in found] == ["1", "2", "5", "6"], found


# ----------------------------------------------------------------------------- configs and presets

def preset_file(tmp_path, sections: dict) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


@pytest.mark.parametrize("sections, key", [
    ({"sft": {"output_dir": "/tmp/elsewhere"}}, "output_dir"),
    ({"collection": {"out": "../escaped"}}, "'out'"),
    ({"docids": {"collection": "/etc"}}, "'collection'"),
    ({"eval": {"model": "/some/other/model"}}, "'model'"),
    ({"ddro": {"work_dir": "/tmp/ddro-work"}}, "work_dir"),
    ({"docids": {"embed_cache": "../../cache"}}, "embed_cache"),
    ({"sft": {"logging_dir": "/var/tmp/logs"}}, "logging_dir"),
    ({"eval": {"cache_dir": "/tmp/eval-cache"}}, "cache_dir"),
])
def test_pipeline_refuses_a_preset_that_moves_paths(tmp_path, capsys, sections, key):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        pipeline_main(["--collection", str(tmp_path / "nowhere"), "--output", str(out),
                       "--preset", str(preset_file(tmp_path, sections))])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: preset") and key in err, err
    assert not out.exists()  # refused before anything was made


def test_pipeline_accepts_a_written_location_inside_out(tmp_path):
    from ddro.pipeline import PipelineArguments, check_preset_paths

    out = tmp_path / "out"
    args = PipelineArguments(str(tmp_path / "c"), str(out))
    check_preset_paths({"docids": {"embed_cache": str(out / "cache")}}, out, args, "p")


def test_config_values_with_nul_are_refused(tmp_path, capsys):
    from ddro.data.beir import main

    config = tmp_path / "c.json"
    config.write_text('{"path": "a\\u0000b", "out": "o"}', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(config)])
    assert e.value.code == 2
    assert "NUL" in capsys.readouterr().err and not (tmp_path / "o").exists()
