"""What a report reads from a pipeline output: per-query metrics of each system recomputed
from its run file, the trainers' logs, and (cached) evaluations at several beam sizes."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DDROError
from ..io import read_json
from ..manifest import MANIFEST, manifest_hash
from ..pipeline import RUN_STAGES, STATE, run_depth, run_stage_of
from ..verify import eval_qrels, model_folder, pipeline_split

log = logging.getLogger(__name__)

SYSTEMS = ("bm25", "dense", "sft", "ddro")
NAMES = {"bm25": "BM25", "dense": "Dense", "sft": "SFT", "ddro": "DDRO"}
MODELS = {"sft": "sft", "ddro": "ddro"}  # system -> checkpoint folder under OUT


@dataclass
class Output:
    """One pipeline output folder, read for the report."""
    label: str
    path: Path
    split: str
    state: dict
    aggregate: dict[str, dict]                    # system -> metrics (means over queries)
    per_query: dict[str, dict[str, dict]]         # system -> query id -> metrics

    @property
    def queries(self) -> int:
        return len(next(iter(self.per_query.values())))


def load_output(path: Path, label: str) -> Output:
    from ..eval.metrics import evaluate

    if not path.is_dir():
        raise DDROError(f"{path}: not a folder")
    state = read_json(path / STATE) if (path / STATE).is_file() else {}
    split = pipeline_split(state, path / "results.md")
    aggregate, per_query = {}, {}
    for stage in RUN_STAGES:
        system = stage.run.system
        run = path / "runs" / f"{system}.{split}.run"
        if not run.is_file():
            raise DDROError(f"{path}: {run.relative_to(path)} not found (finish the pipeline first: "
                            f"ddro pipeline --output {path})")
        config = state.get(stage.name, {}).get("config")
        aggregate[system], per_query[system] = evaluate(run, eval_qrels(path, split, config),
                                                        run_depth(stage, config))
    return Output(label, path, split, state, aggregate, per_query)


def labels_for(paths: list[Path]) -> list[str]:
    """Folder names, or parent-name when the names repeat (resources/{demo,small}/scifact)."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}-{p.resolve().name}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i + 1}-{n}" for i, n in enumerate(names)]
    return [re.sub(r"[^A-Za-z0-9_.-]+", "_", n) for n in names]


# ------------------------------------------------------------------ training logs

def sft_curves(out: Path) -> dict[str, list[tuple[float, float]]]:
    """SFT stage -> [(step, loss)] from the last checkpoint's trainer_state.json of each stage."""
    curves = {}
    sft = out / "sft"
    for stage in sorted(p for p in sft.iterdir() if (p / MANIFEST).is_file()) if sft.is_dir() else []:
        states = sorted(stage.glob("checkpoints/checkpoint-*/trainer_state.json"),
                        key=lambda p: int(p.parent.name.rsplit("-", 1)[1]))
        if states:
            history = read_json(states[-1]).get("log_history", [])
            curves[stage.name] = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
    return curves


def ddro_curves(out: Path) -> dict[str, list[tuple[float, float]]]:
    """DDRO training logs: loss, pairwise reward accuracy and reward margin per logged step."""
    path = out / "ddro" / "log_history.json"
    history = read_json(path) if path.is_file() else []
    keys = {"loss": "loss", "reward accuracy": "rewards/accuracies", "reward margin": "rewards/margins"}
    return {name: [(e["step"], e[key]) for e in history if key in e and "step" in e] for name, key in keys.items()}


def ddro_logps(out: Path) -> dict[str, list[tuple[float, float]]] | None:
    """Mean summed docid log-prob of the positive and of the negative per logged DDRO step
    (training, and `eval_` validation entries); None when the log holds no such keys
    (no DDRO stage, or a trainer that did not log them)."""
    path = out / "ddro" / "log_history.json"
    history = read_json(path) if path.is_file() else []
    keys = {"positive": "logps/chosen", "negative": "logps/rejected",
            "positive (validation)": "eval_logps/chosen", "negative (validation)": "eval_logps/rejected"}
    curves = {name: [(e["step"], e[key]) for e in history if key in e and "step" in e] for name, key in keys.items()}
    return curves if any(curves.values()) else None


# ------------------------------------------------------------------ first relevant rank

RANK_BUCKETS = ("1", "2-3", "4-10", ">10 / none")


def rank_bucket(rank: int | None) -> str:
    """The bucket of a first relevant rank; None (no relevant docid in the run) joins >10."""
    if rank is None or rank > 10:
        return RANK_BUCKETS[3]
    return RANK_BUCKETS[0] if rank == 1 else RANK_BUCKETS[1] if rank <= 3 else RANK_BUCKETS[2]


def first_relevant_ranks(run: dict[str, list[tuple[str, float]]], qrels: dict) -> dict[str, int | None]:
    """Query -> 1-based rank of its first relevant document in the run's canonical order (None when
    the run holds none), for the queries with a relevant document, as the metrics count them."""
    from ..eval.metrics import relevant_qrels
    from ..eval.runs import canonical_run

    run, ranks = canonical_run(run), {}
    for qid, relevant in relevant_qrels(qrels).items():
        hits = [i for i, (doc, _) in enumerate(run.get(qid, []), start=1) if doc in relevant]
        ranks[qid] = hits[0] if hits else None
    return ranks


def rank_transitions(before: dict[str, int | None], after: dict[str, int | None]) -> dict[tuple[str, str], int]:
    """(bucket before, bucket after) -> queries, over the queries of `before` (every cell present)."""
    counts = {(a, b): 0 for a in RANK_BUCKETS for b in RANK_BUCKETS}
    for qid, rank in before.items():
        counts[rank_bucket(rank), rank_bucket(after.get(qid))] += 1
    return counts


def system_ranks(output: Output, system: str) -> dict[str, int | None]:
    """First relevant ranks of a system's `runs/<system>.<split>.run` on the qrels it was evaluated on."""
    from ..eval.runs import read_run

    config = output.state.get(run_stage_of(system).name, {}).get("config")
    run = read_run(output.path / "runs" / f"{system}.{output.split}.run")
    return first_relevant_ranks(run, eval_qrels(output.path, output.split, config))


# ------------------------------------------------------------------ beam sizes

def preset_beams(output: Output) -> int | None:
    evaluations = [s.name for s in RUN_STAGES if s.run.depth_key == "beams"]
    beams = [output.state.get(s, {}).get("config", {}).get("beams") for s in evaluations]
    beams = [b for b in beams if isinstance(b, int)]
    return max(beams) if beams else None


def beam_sweep(output: Output, cache: Path, beam_sizes: list[int], max_queries: int | None,
               batch_size: int, device: str | None) -> dict[str, dict[int, dict]]:
    """system -> beam size -> metrics, from `ddro eval` on the saved SFT and DDRO checkpoints.

    Each evaluation is a normal `ddro eval` folder under `cache`; one whose manifest records
    the same model, decoding settings, split and query limit is reused, so a second report is instant.
    The runs decode as the pipeline's own evaluation did (its `eval` section), beam size aside.
    """
    from dataclasses import asdict, replace

    from ..eval.decoding import decoding_from
    from ..eval.evaluate import EvalArguments
    from ..eval.evaluate import run as evaluate

    cap = preset_beams(output)
    decoding = decoding_from(output.state.get("eval_sft", {}).get("config") or {})
    sizes = sorted({b for b in beam_sizes if cap is None or b <= cap})
    out, results = output.path, {}
    for system, folder in MODELS.items():
        model = out / folder
        if not (model_folder(model) / MANIFEST).is_file():
            log.warning("%s: no %s checkpoint, no beam-size curve for it", out, system)
            continue
        model_hash = manifest_hash(model_folder(model))
        results[system] = {}
        for beams in sizes:
            target, settings = cache / f"{system}-beam{beams}", replace(decoding, beams=beams)
            if not cached(target, model_hash, asdict(settings), output.split, max_queries):
                log.info("[report] %s: %s at beam size %d", output.label, system, beams)
                evaluate(EvalArguments(model=str(model), docids=str(out / "docids"), out=str(target),
                                       instances=str(out / "instances"), split=output.split,
                                       batch_size=batch_size, max_queries=max_queries, device=device,
                                       tag=f"{system}-beam{beams}", overwrite=True), settings)
            results[system][beams] = read_json(target / "metrics.json")
    return results


def cached(folder: Path, model_hash: str, decoding: dict, split: str, max_queries: int | None) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    config = manifest.get("config", {})
    return (manifest.get("inputs", {}).get("model") == model_hash
            and all(config.get(k) == v for k, v in decoding.items())
            and config.get("split") == split and config.get("max_queries") == max_queries
            and (folder / "metrics.json").is_file())

