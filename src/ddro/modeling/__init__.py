"""Encoder-decoder constructions for docid generation, and their checkpoint folders."""
from .build import (
           CONSTRUCTIONS,
           BuiltModel,
           ModelArguments,
           build_model,
           freeze_encoder,
           freeze_encoder_embeddings,
           output_rows,
)
from .checkpoint import DOCIDS_COPY, MODEL_INFO, LoadedModel, load_model, resolve_checkpoint, save_model

__all__ = ["CONSTRUCTIONS", "BuiltModel", "ModelArguments", "build_model", "freeze_encoder",
           "freeze_encoder_embeddings", "output_rows", "DOCIDS_COPY", "MODEL_INFO", "LoadedModel", "load_model",
           "resolve_checkpoint", "save_model"]
