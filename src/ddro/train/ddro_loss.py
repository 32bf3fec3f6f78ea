"""The phase-2 objectives: reference-anchored, over summed docid log-probabilities.

log p(d|q) is the sum of the docid's token log-probabilities under teacher forcing (no
length normalisation); padding (label -100) contributes nothing. r(d) = log p(d|q) -
log p_ref(d|q) is the policy-vs-reference log-ratio, beta * r(d) the implicit reward.
`--loss_type` picks one function of `LOSSES` (TRL's `loss_type` idea); each returns a
`PairLoss` whose batch loss is the mean of its per-row losses:

- `sigmoid` (default, the paper's DDRO loss), per (query, d+, BM25 hard negative d-) pair::

      loss = -log sigmoid(beta * (r(d+) - r(d-)))

  DPO's sigmoid loss (TRL `loss_type="sigmoid"`, no label smoothing);
  `tests/test_trl_parity.py` checks loss and gradients against TRL 0.28.0.
- `rpo`: the sigmoid loss + rpo_alpha * (-log p(d+|q)), per pair. The NLL of the positive
  keeps its likelihood from drifting down while the margin grows (a known DPO failure:
  both log-probs fall). RPO, Pang et al. 2024, "Iterative Reasoning Preference
  Optimization"; TRL's `rpo_alpha`. TRL normalises that NLL per token; here it is the
  summed docid log-prob, like every other term of the loss (docids are short and of
  nearly equal length).
- `listwise`: per (query, d+) group with its K negatives (K may vary: padding is masked)::

      loss = -log( exp(beta r(d+)) / (exp(beta r(d+)) + sum_k exp(beta r(d-_k))) )

  multi-negative DPO, the Plackett-Luce top-1 probability of d+; with K = 1 it is the
  sigmoid loss. The batch loss is the mean over groups.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import DDROError
from ..padding import IGNORE, stack_padded


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label_t) over each row's positions whose label is not -100: shape [B]."""
    mask = labels != IGNORE
    safe = labels.masked_fill(~mask, 0)
    picked = torch.gather(logits, -1, safe.unsqueeze(-1)).squeeze(-1)
    token_logps = picked.float() - torch.logsumexp(logits.float(), dim=-1)  # log_softmax at the label only
    return (token_logps * mask).sum(-1)


@dataclass
class PairLoss:
    """Per-row losses and the detached quantities the trainer logs.

    Rejected tensors are [B] (one negative per pair) or [B, K] (groups; `rejected_mask`
    marks the real negatives, the padded ones hold 0).
    """
    losses: torch.Tensor  # [B]: per pair, or per group
    chosen_rewards: torch.Tensor  # beta * r(d+), detached
    rejected_rewards: torch.Tensor  # beta * r(d-), detached
    chosen_logps: torch.Tensor  # log p(d+|q), detached
    rejected_logps: torch.Tensor  # log p(d-|q), detached
    rejected_mask: Optional[torch.Tensor] = None  # [B, K] bool, groups only

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()

    def gathered(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> "PairLoss":
        """The same result with every tensor passed through `gather` (DDP: every rank's rows), detached.
        The mask goes as float, so that a gather that pads groups to the largest K pads it with 0."""
        def one(t):
            return None if t is None else gather(t.detach().float() if t.dtype == torch.bool else t.detach())
        return PairLoss(*(one(getattr(self, f.name)) for f in fields(self)))

    def metrics(self) -> dict[str, float]:
        """Batch means: rewards/chosen and logps/chosen per positive, rewards/rejected and logps/rejected
        per negative, rewards/margins and rewards/accuracies per (positive, negative) pair."""
        rejected = self.rejected_rewards.reshape(len(self.chosen_rewards), -1)
        mask = torch.ones_like(rejected, dtype=torch.bool) if self.rejected_mask is None else self.rejected_mask.bool()
        margins = (self.chosen_rewards[:, None] - rejected)[mask]
        return {"rewards/chosen": self.chosen_rewards.mean().item(),
                "rewards/rejected": rejected[mask].mean().item(),
                "rewards/margins": margins.mean().item(),
                "rewards/accuracies": (margins > 0).float().mean().item(),
                "logps/chosen": self.chosen_logps.mean().item(),
                "logps/rejected": self.rejected_logps.reshape(mask.shape)[mask].mean().item()}


def ddro_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, beta: float) -> PairLoss:
    """`sigmoid`, the paper's loss: per-pair losses and rewards from summed log-probabilities (all [B])."""
    chosen_logratios = policy_chosen - ref_chosen.to(policy_chosen)
    rejected_logratios = policy_rejected - ref_rejected.to(policy_rejected)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return PairLoss(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach(),
                    policy_chosen.detach(), policy_rejected.detach())


def rpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, rpo_alpha: float = 1.0) -> PairLoss:
    """`rpo`: the sigmoid loss + rpo_alpha * NLL of d+ (its summed docid log-prob), per pair (all [B])."""
    out = ddro_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return replace(out, losses=out.losses - rpo_alpha * policy_chosen)


def listwise_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor, beta: float,
                  rejected_mask: Optional[torch.Tensor] = None) -> PairLoss:
    """`listwise`: -log softmax over [d+, d-_1..K] of beta * r, taken at d+; per group.

    `policy_chosen`, `ref_chosen`: [B]; `policy_rejected`, `ref_rejected`: [B, K]; `rejected_mask`
    [B, K]: which negatives are real (None: all). Padded negatives get no probability mass and
    no gradient, whatever their values.
    """
    mask = torch.ones_like(policy_rejected, dtype=torch.bool) if rejected_mask is None else rejected_mask.bool()
    chosen = policy_chosen - ref_chosen.to(policy_chosen)
    rejected = (policy_rejected - ref_rejected.to(policy_rejected)).masked_fill(~mask, 0.0)
    present = F.pad(mask, (1, 0), value=True)  # d+, then the real negatives
    scores = (beta * torch.cat([chosen[:, None], rejected], dim=1)).masked_fill(~present, float("-inf"))
    losses = -torch.log_softmax(scores, dim=1)[:, 0]
    return PairLoss(losses, beta * chosen.detach(), beta * rejected.detach(), policy_chosen.detach(),
                    policy_rejected.detach().masked_fill(~mask, 0.0), mask)


LOSSES: dict[str, Callable[..., PairLoss]] = {"sigmoid": ddro_loss, "rpo": rpo_loss, "listwise": listwise_loss}
GROUPED = frozenset({"listwise"})  # trained on (query, d+, K negatives) groups; the others on pairs


def check_loss(loss_type: str, beta: float, rpo_alpha: float) -> None:
    """One-line errors for settings no loss accepts."""
    if loss_type not in LOSSES:
        raise DDROError(f"--loss_type: one of {', '.join(LOSSES)}, got {loss_type!r}")
    if not beta > 0:
        raise DDROError(f"--beta must be > 0, got {beta}")
    if not rpo_alpha >= 0:
        raise DDROError(f"--rpo_alpha must be >= 0, got {rpo_alpha}")


def loss_function(loss_type: str, beta: float, rpo_alpha: float = 1.0) -> Callable[..., PairLoss]:
    """The loss `loss_type` with its settings bound: call it with (policy_chosen, policy_rejected,
    ref_chosen, ref_rejected[, rejected_mask=] for grouped losses)."""
    check_loss(loss_type, beta, rpo_alpha)
    options = {"rpo_alpha": rpo_alpha} if loss_type == "rpo" else {}
    return partial(LOSSES[loss_type], beta=beta, **options)


def decoder_inputs(model, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forcing decoder inputs (labels shifted right, start token first, -100 -> pad)."""
    return model.prepare_decoder_input_ids_from_labels(labels=labels)


def docid_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """log p(docid | query) per row through the model's own forward (works through DDP wrappers)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels.contiguous(),
                   use_cache=False).logits
    return sequence_logps(logits, labels)


def grouped_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                  owner: torch.Tensor) -> torch.Tensor:
    """log p(labels[i] | query owner[i]): the encoder runs once per query, the decoder per label row."""
    from transformers.modeling_outputs import BaseModelOutput

    hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
    logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden[owner]),
                   attention_mask=attention_mask[owner], decoder_input_ids=decoder_inputs(model, labels),
                   use_cache=False).logits
    return sequence_logps(logits, labels)


def list_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, chosen_labels: torch.Tensor,
               rejected_labels: torch.Tensor, rejected_mask: torch.Tensor,
               share_encoder: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(d+|q) [B] and log p(d-_k|q) [B, K] (0 where `rejected_mask` is False) in one decoder pass.

    `chosen_labels` [B, Lc], `rejected_labels` [B, K, Lr]; only the real negatives are decoded,
    after the positives: [d+ of each query; its real negatives]. With `share_encoder` the encoder
    runs once per query and its output feeds every row (gradients from all rows flow back into
    the one pass); otherwise the queries are repeated and the model's own forward runs on the
    concatenated batch (TRL's way, needed for wrappers such as DDP whose forward must be called).
    """
    b, k = rejected_mask.shape
    real = rejected_mask.reshape(-1).bool()
    queries = torch.arange(b, device=input_ids.device)
    owner = torch.cat([queries, queries.repeat_interleave(k)[real]])
    labels = stack_padded(chosen_labels, rejected_labels.reshape(b * k, -1)[real])
    if share_encoder:
        logps = grouped_logps(model, input_ids, attention_mask, labels, owner)
    else:
        logps = docid_logps(model, input_ids[owner], attention_mask[owner], labels)
    rejected = logps.new_zeros(b * k).index_copy(0, real.nonzero().squeeze(1), logps[b:])
    return logps[:b], rejected.reshape(b, k)


def pair_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, chosen_labels: torch.Tensor,
               rejected_labels: torch.Tensor, share_encoder: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(d+|q), log p(d-|q) for a batch of pairs in one decoder pass over [chosen; rejected]:
    `list_logps` with one negative per query."""
    mask = torch.ones(len(input_ids), 1, dtype=torch.bool, device=input_ids.device)
    chosen, rejected = list_logps(model, input_ids, attention_mask, chosen_labels, rejected_labels[:, None],
                                  mask, share_encoder)
    return chosen, rejected[:, 0]
