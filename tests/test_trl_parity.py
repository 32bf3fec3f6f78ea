"""Our DDRO loss and gradients equal TRL 0.28.0's DPOTrainer sigmoid loss on the same batch.

TRL >= 0.29 dropped encoder-decoder support and 0.28.0 needs transformers 5.2.0, so the
TRL side runs in its own venv, `.venv-trl/` in the repo root (git-ignored; override with
DDRO_TRL_VENV), created here on first use from tests/trl_parity/requirements.txt (torch
first, alone, for the CPU build; about 1-2 minutes) and reused afterwards. Without a
package index the venv cannot be made and the test skips, saying why.

This side writes a tiny random T5 (save_pretrained) and a batch of pairs; the TRL side
(tests/trl_parity/trl_side.py) computes loss, log-probs and gradients with TRL's own
`get_batch_loss_metrics` (policy + its own reference copy); we compute ours with the
trainer's path: precomputed reference log-probs, encoder-once pair forward, `ddro_loss`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddro.train.ddro_loss import ddro_loss, pair_logps
from ddro.train.ddro_trainer import disable_dropout
from ddro.train.pairs import PairCollator
from ddro.train.reference import compute_reference_logps

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "trl_parity"
REQUIREMENTS = HERE / "requirements.txt"
VENV = Path(os.environ.get("DDRO_TRL_VENV", ROOT / ".venv-trl"))
READY = VENV / "ddro-ready.txt"  # holds the requirements it was built from
BETA = 0.4


def pins() -> list[str]:
    return [line.strip() for line in REQUIREMENTS.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def venv_python() -> Path:
    """The TRL venv's python, created (once) if missing or built from other pins."""
    python = VENV / "bin" / "python"
    if python.is_file() and READY.is_file() and READY.read_text() == REQUIREMENTS.read_text():
        return python
    steps = [[sys.executable, "-m", "venv", "--clear", str(VENV)],
             [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", pins()[0]],
             [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins()[1:]]]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            pytest.skip(f"creating {VENV} timed out at: {' '.join(cmd[-3:])}")
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            pytest.skip(f"cannot create the TRL venv {VENV} (no package index?): {' '.join(cmd[-3:])}: "
                        + " | ".join(tail))
    READY.write_text(REQUIREMENTS.read_text())
    return python


def tiny_t5(folder: Path, seed: int):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    # dropout 0 in the config: TRL's disable_dropout only zeroes nn.Dropout modules, and T5's
    # attention dropout is a float attribute, so TRL would train with it on.
    config = T5Config(vocab_size=48, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8,
                      dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    return model


PAIRS = [  # queries of different lengths (T5 pad id 0 never inside a query), docids of 2-4 tokens
    {"query": [5, 9, 13, 7, 1], "chosen": [40, 41, 42], "rejected": [43, 44, 45]},
    {"query": [6, 1], "chosen": [41, 47], "rejected": [40, 46, 44, 42]},
    {"query": [11, 12, 3, 1], "chosen": [42, 43, 44, 45], "rejected": [46, 47]},
    {"query": [20, 21, 22, 23, 24, 25, 1], "chosen": [45, 40], "rejected": [47, 41, 43]},
    {"query": [6, 1], "chosen": [46, 45, 44], "rejected": [41, 47, 40]},
]


def ours(model, ref_model) -> dict[str, torch.Tensor]:
    """The DDRO trainer's computation: the precomputed reference pass, then the policy step."""
    queries = [p["query"] for p in PAIRS]
    docids = [tuple(p["chosen"]) for p in PAIRS] + [tuple(p["rejected"]) for p in PAIRS]
    n = len(PAIRS)
    items = np.array(sorted([(i, i) for i in range(n)] + [(i, n + i) for i in range(n)]))
    ref = compute_reference_logps(ref_model, queries, docids, items, pad_token_id=0, batch_size=3)
    ref_of = {(int(q), int(d)): v for (q, d), v in zip(items, ref)}
    batch = PairCollator(pad_token_id=0)([
        {"input_ids": p["query"], "chosen": p["chosen"], "rejected": p["rejected"],
         "ref_chosen": ref_of[(i, i)], "ref_rejected": ref_of[(i, n + i)]} for i, p in enumerate(PAIRS)])
    disable_dropout(model)
    model.train()
    model.zero_grad()
    chosen, rejected = pair_logps(model, batch["input_ids"], batch["attention_mask"], batch["chosen_labels"],
                                  batch["rejected_labels"])
    result = ddro_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], BETA)
    result.loss.backward()
    out = {"loss": result.loss.detach().reshape(1), "chosen_logps": chosen.detach(),
           "rejected_logps": rejected.detach(), "ref_chosen_logps": batch["ref_chosen"],
           "ref_rejected_logps": batch["ref_rejected"]}
    out.update({f"grad.{name}": p.grad for name, p in model.named_parameters() if p.grad is not None})
    return out


def test_loss_and_gradients_match_trl_dpo_sigmoid(tmp_path):
    from safetensors.torch import load_file

    python = venv_python()
    # policy and reference differ (as after some DDRO steps), so the loss is not simply log 2
    model, ref_model = tiny_t5(tmp_path / "model", seed=1), tiny_t5(tmp_path / "ref", seed=2)
    (tmp_path / "batch.json").write_text(json.dumps({"beta": BETA, "pad_token_id": 0, "pairs": PAIRS}))
    done = subprocess.run([str(python), str(HERE / "trl_side.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "trl.json").read_text())
    assert info["trl"] == "0.28.0" and info["transformers"] == "5.2.0"
    theirs = load_file(str(tmp_path / "trl.safetensors"))
    mine = ours(model, ref_model)

    for key in ("ref_chosen_logps", "ref_rejected_logps", "chosen_logps", "rejected_logps"):
        torch.testing.assert_close(mine[key], theirs[key], atol=1e-5, rtol=0, msg=key)
    torch.testing.assert_close(mine["loss"], theirs["loss"], atol=1e-5, rtol=0)
    assert abs(mine["loss"].item() - np.log(2)) > 0.01
    grads = sorted(k for k in theirs if k.startswith("grad."))
    assert grads == sorted(k for k in mine if k.startswith("grad.")) and len(grads) > 10
    assert max(theirs[k].abs().max().item() for k in grads) > 1e-3
    for key in grads:
        torch.testing.assert_close(mine[key], theirs[key], atol=1e-5, rtol=1e-4, msg=key)
    margins = BETA * ((mine["chosen_logps"] - mine["ref_chosen_logps"])
                      - (mine["rejected_logps"] - mine["ref_rejected_logps"]))
    assert info["metrics"]["rewards/margins"] == pytest.approx(margins.mean().item(), abs=1e-5)
    assert info["metrics"]["rewards/accuracies"] == pytest.approx((margins > 0).float().mean().item())
