"""The `ddro` command, config files and `python -m` entry points."""
import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from ddro import cli
from ddro.config import parse_args
from ddro.errors import DDROError


@dataclass
class Args:
    out: str = field(metadata={"help": "output"})
    lr: float = 1e-3
    epochs: int = 3
    flag: bool = False
    enabled: bool = True


def test_help_lists_every_registered_command(capsys):
    cli.main(["--help"])
    text = capsys.readouterr().out
    for words, module, _ in cli.COMMANDS:
        assert words in text
        __import__(module)  # every registered command exists


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2
    assert "unknown command" in capsys.readouterr().err


def test_config_file_then_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: /x\nlr: 0.5\nflag: true\nenabled: false\n")
    (args,) = parse_args([Args], ["--config", str(cfg), "--lr", "0.25"])
    assert (args.out, args.lr, args.epochs, args.flag, args.enabled) == ("/x", 0.25, 3, True, False)
    jcfg = tmp_path / "c.json"
    jcfg.write_text(json.dumps({"out": "/y", "epochs": 7}))
    (args,) = parse_args([Args], ["--config", str(jcfg)])
    assert (args.out, args.epochs) == ("/y", 7)


def test_config_unknown_key_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: /x\nlearning_rate: 0.5\n")
    with pytest.raises(DDROError, match="unknown key 'learning_rate'"):
        parse_args([Args], ["--config", str(cfg)])


def test_config_wrong_type_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: /x\nepochs: three\n")
    with pytest.raises(SystemExit):
        parse_args([Args], ["--config", str(cfg)])
    assert "--epochs" in capsys.readouterr().err


def test_module_and_cli_entry_points_agree(tmp_path, shared_data):
    a, b = tmp_path / "a", tmp_path / "b"
    src = str(shared_data / "adi")
    subprocess.run([sys.executable, "-m", "ddro", "data", "beir", "--path", src, "--out", str(a)], check=True)
    subprocess.run([sys.executable, "-m", "ddro.data.beir", "--path", src, "--out", str(b)], check=True)
    assert (a / "corpus.jsonl").read_bytes() == (b / "corpus.jsonl").read_bytes()


def test_user_error_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ddro", "data", "beir", "--path", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr
