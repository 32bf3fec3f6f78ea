import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("DDRO_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real collections beside the checkout (../shared/data); tests skip without them."""
    if not SHARED.is_dir():
        pytest.skip(f"shared collections not found at {SHARED} (set DDRO_SHARED_DATA)")
    return SHARED


@pytest.fixture
def adi_train(shared_data, tmp_path):
    """ADI (82 documents, 35 queries) with its judgements as a train split: real input for mining negatives."""
    from ddro.data.collection import Collection, write_collection

    adi = Collection(shared_data / "adi")
    folder = tmp_path / "adi"
    write_collection(folder, list(adi.iter_docs()), adi.queries(), {"train": adi.qrels(adi.splits[0])},
                     source="test")
    return folder


# The whole pipeline in about a minute (adi, tiny model): built once per session by
# `pipeline_out` for test_pipeline.py, test_verify.py and test_report.py. Tests that
# change files work on a copy.
MICRO = {
    "docids": {"encoding": "pq", "target_vocab": "own", "pq_subspaces": 4, "pq_bits": 4, "dedup": True,
               "embed_max_length": 64},
    "pseudo_queries": {"method": "spans", "per_doc": 3},
    "instances": {"tokenizer": "offline:minilm", "lowercase": False, "stage1_max_length": 48,
                  "passages_per_doc": 2},
    "sft": {"construction": "minilm-decoder", "decoder_layers": 1, "freeze_encoder_embeddings": True,
            "schedule": "mixed", "mix_epochs": 1, "max_steps": 6, "per_device_train_batch_size": 16,
            "learning_rate": 0.001, "logging_steps": 2, "save_steps": 1000, "report_to": "none"},
    "bm25": {"k1": 0.9, "b": 0.4},
    "negatives": {"negatives": 2, "bands": "1-10", "val_fraction": 0.1},
    "eval": {"beams": 5, "batch_size": 8},
    "ddro": {"beta": 0.4, "learning_rate": 0.00001, "max_steps": 3, "per_device_train_batch_size": 8,
             "warmup_steps": 0, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1},
}


@pytest.fixture(scope="session")
def pipeline_out(shared_data, tmp_path_factory):
    """(PipelineArguments, output folder) of the micro pipeline on adi."""
    import yaml

    from ddro.pipeline import PipelineArguments, run_pipeline

    out = tmp_path_factory.mktemp("pipeline")
    preset = out.parent / "micro.yaml"
    preset.write_text(yaml.safe_dump(MICRO))
    args = PipelineArguments(collection=str(shared_data / "adi"), output=str(out / "adi"), preset=str(preset))
    run_pipeline(args)
    return args, out / "adi"
