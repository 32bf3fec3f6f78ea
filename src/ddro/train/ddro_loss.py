"""The DDRO objective: pairwise, reference-anchored, over summed docid log-probabilities.

For a query q, a relevant docid d+ and a BM25 hard negative d-::

    loss = -log sigmoid(beta * ((log p(d+|q) - log p_ref(d+|q)) - (log p(d-|q) - log p_ref(d-|q))))

log p(d|q) is the sum of the docid's token log-probabilities under teacher forcing (no
length normalisation); padding (label -100) contributes nothing. The batch loss is the
mean over pairs. This is DPO's sigmoid loss (TRL `loss_type="sigmoid"`, no label
smoothing); `tests/test_trl_parity.py` checks loss and gradients against TRL 0.28.0.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F

IGNORE = -100


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label_t) over each row's positions whose label is not -100: shape [B]."""
    mask = labels != IGNORE
    safe = labels.masked_fill(~mask, 0)
    picked = torch.gather(logits, -1, safe.unsqueeze(-1)).squeeze(-1)
    token_logps = picked.float() - torch.logsumexp(logits.float(), dim=-1)  # log_softmax at the label only
    return (token_logps * mask).sum(-1)


@dataclass
class PairLoss:
    losses: torch.Tensor  # [B]
    chosen_rewards: torch.Tensor  # beta * (log p(d+) - log p_ref(d+)), detached
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor  # log p(d+|q), detached
    rejected_logps: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()

    def gathered(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> "PairLoss":
        """The same result with every tensor passed through `gather` (DDP: every rank's rows), detached."""
        return PairLoss(*(gather(getattr(self, f.name).detach()) for f in fields(self)))

    def metrics(self) -> dict[str, float]:
        margins = self.chosen_rewards - self.rejected_rewards
        return {"rewards/chosen": self.chosen_rewards.mean().item(),
                "rewards/rejected": self.rejected_rewards.mean().item(),
                "rewards/margins": margins.mean().item(),
                "rewards/accuracies": (margins > 0).float().mean().item(),
                "logps/chosen": self.chosen_logps.mean().item(),
                "logps/rejected": self.rejected_logps.mean().item()}


def ddro_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, beta: float) -> PairLoss:
    """Per-pair losses and implicit rewards from summed sequence log-probabilities (all [B])."""
    chosen_logratios = policy_chosen - ref_chosen.to(policy_chosen)
    rejected_logratios = policy_rejected - ref_rejected.to(policy_rejected)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return PairLoss(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach(),
                    policy_chosen.detach(), policy_rejected.detach())


def decoder_inputs(model, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forcing decoder inputs (labels shifted right, start token first, -100 -> pad)."""
    return model.prepare_decoder_input_ids_from_labels(labels=labels)


def pad_labels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Stack two label matrices [B, La], [B, Lb] into [2B, max(La, Lb)], padding with -100."""
    width = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, width - a.shape[1]), value=IGNORE),
                      F.pad(b, (0, width - b.shape[1]), value=IGNORE)])


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


def pair_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, chosen_labels: torch.Tensor,
               rejected_labels: torch.Tensor, share_encoder: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(d+|q), log p(d-|q) for a batch of pairs in one decoder pass over [chosen; rejected].

    With `share_encoder` the encoder runs once per query and its output feeds both halves
    (gradients from both flow back into the one pass); otherwise the queries are repeated
    and the model's own forward runs on the concatenated batch (TRL's way, needed for
    wrappers such as DDP whose forward must be called).
    """
    n = input_ids.shape[0]
    labels = pad_labels(chosen_labels, rejected_labels)
    if share_encoder:
        owner = torch.arange(n, device=input_ids.device).repeat(2)
        logps = grouped_logps(model, input_ids, attention_mask, labels, owner)
    else:
        logps = docid_logps(model, input_ids.repeat(2, 1), attention_mask.repeat(2, 1), labels)
    return logps[:n], logps[n:]
