"""Training stages: `ddro train sft` (Phase 1); the DDRO pairwise stage builds on the same checkpoints."""
