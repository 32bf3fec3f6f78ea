"""Right padding of token-id rows, shared by training (SFT, DDRO) and evaluation.

Kept apart from train/ so that eval imports only torch and numpy from here. `IGNORE` is the
label of padded positions: the cross-entropy and the DDRO log-probs skip it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100  # label of padding: ignored by the losses, never a real token id


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """[len(rows), longest row] int64, each row right-padded with `value` (rows: lists, tuples or arrays)."""
    out = np.full((len(rows), max(map(len, rows))), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row  # numpy copies a list, tuple or array row without a per-row tensor
    return torch.from_numpy(out)


def pad_queries(queries: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and their attention mask, taken from the lengths (not from the pad id,
    which may also be a real token)."""
    lengths = torch.tensor([len(q) for q in queries])
    input_ids = pad_rows(queries, pad_token_id)
    return input_ids, (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()


def stack_padded(*matrices: torch.Tensor, value: int = IGNORE) -> torch.Tensor:
    """Label matrices [Ni, Li] stacked into [sum Ni, max Li], right-padded with `value`; for tensors
    already on the device (one pad per matrix, no per-row copies)."""
    width = max(m.shape[1] for m in matrices)
    return torch.cat([F.pad(m, (0, width - m.shape[1]), value=value) for m in matrices])
