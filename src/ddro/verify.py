"""`ddro verify OUT`: re-check a pipeline folder against its own records.

For every stage of `ddro pipeline` it checks that
- the stage's folder, its done file and its manifest(s) exist and parse (else MISSING / CORRUPT);
- every file a manifest lists still has the recorded sha256 (CORRUPT, naming the file;
  MISSING when gone);
- every input hash a manifest records is the current manifest hash of that input's folder
  (STALE: the upstream changed after this stage was built);
- `pipeline.json` records this stage with the config in `configs/<stage>.json`, the current
  output and the current outputs of its upstream stages (STALE / CORRUPT otherwise).
Then `runs/<system>.<split>.run` must equal the evaluation folders' `run.trec`, and every
number of `results.md` must equal the metric recomputed from those run files with
`ir_measures` on the collection's qrels.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Optional

from .config import entry_point, parse_args
from .errors import DDROError
from .io import sha256_file
from .manifest import MANIFEST
from .pipeline import RUN_STAGES, STAGES, STATE, Stage, run_depth, stage_folder

OK, STALE, MISSING, CORRUPT = "OK", "STALE", "MISSING", "CORRUPT"
SEVERITY = {OK: 0, STALE: 1, CORRUPT: 2, MISSING: 3}
HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class VerifyArguments:
    output: str = field(metadata={"help": "the pipeline folder (`ddro pipeline --output`); also positional: "
                                          "ddro verify OUT"})
    digits: int = field(default=4, metadata={"help": "decimals results.md was written with"})


@dataclass
class Check:
    """One row of the verdict: a stage (or a pipeline-level file) and its problems."""
    name: str
    folder: str
    problems: list[tuple[str, str]] = field(default_factory=list)  # (status, what)

    def add(self, status: str, what: str) -> None:
        self.problems.append((status, what))

    @property
    def status(self) -> str:
        return max((s for s, _ in self.problems), key=SEVERITY.__getitem__, default=OK)


def leading_positionals(argv, option: str) -> list[str]:
    """`cmd A B --x 1` -> `cmd --option A B --x 1`: positional folders before the first flag."""
    argv = list(argv)
    n = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    return ([option, *argv[:n]] if n else []) + argv[n:]


def load_json(path: Path, check: Check, what: str):
    """The parsed file, or None with the problem recorded."""
    if not path.is_file():
        check.add(MISSING, f"{what} not found")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        check.add(CORRUPT, f"{what} does not parse ({e.__class__.__name__})")
        return None


def recorded_root(stage: Stage, config: dict) -> PurePath | None:
    """The pipeline output folder as the stage saw it (its configured output minus its own folder)."""
    own = config.get(stage.out_key)
    if not isinstance(own, str):
        return None
    depth = len(stage_folder(Path("."), stage).parts)
    path = PurePath(own)
    return path.parents[depth - 1] if len(path.parts) > depth else PurePath(".")


def remap(path: str, root: PurePath | None, out: Path) -> Path:
    """A recorded path inside the pipeline folder -> the same path in OUT (which may have moved)."""
    p = PurePath(path)
    if root is not None:
        try:
            return out / p.relative_to(root)
        except ValueError:
            pass
    return Path(p)


def model_folder(folder: Path) -> Path:
    """An SFT output stands for its final stage (what evaluation and DDRO load)."""
    final = folder / "final.json"
    if final.is_file():
        try:
            return folder / json.loads(final.read_text(encoding="utf-8"))["folder"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return folder
    return folder


def current_hash(folder: Path) -> str | None:
    path = folder / MANIFEST
    return sha256_file(path) if path.is_file() else None


def check_manifest(out: Path, folder: Path, manifest: dict, stage: Stage, check: Check,
                   known_hashes: set[str]) -> None:
    """Listed files against their hashes; recorded inputs against the current upstream folders."""
    rel = folder.relative_to(out).as_posix()
    for name, digest in sorted((manifest.get("files") or {}).items()):
        path = folder / name
        if not path.is_file():
            check.add(MISSING, f"{rel}/{name} is missing")
        elif sha256_file(path) != digest:
            check.add(CORRUPT, f"{rel}/{name} does not match its sha256 in the manifest")
    config = manifest.get("config") or {}
    root = recorded_root(stage, config)
    for key, recorded in sorted((manifest.get("inputs") or {}).items()):
        if not (isinstance(recorded, str) and HASH.match(recorded)):
            continue  # None (no such input) or a path, not a folder identity
        source = config.get(key)
        if key == "init":
            source = (manifest.get("init") or {}).get("path")
        if isinstance(source, str):
            upstream = model_folder(remap(source, root, out))
            shown = upstream.relative_to(out).as_posix() if upstream.is_relative_to(out) else str(upstream)
            now = current_hash(upstream)
            if now is None:
                check.add(STALE, f"input '{key}' ({shown}) has no manifest any more")
            elif now != recorded:
                check.add(STALE, f"input '{key}' ({shown}) changed after {rel} was built")
        elif recorded not in known_hashes:
            check.add(STALE, f"input '{key}': no folder in OUT has the manifest it was built from")


def check_stage(out: Path, stage: Stage, state: dict | None, check: Check, known_hashes: set[str]) -> None:
    folder = stage_folder(out, stage)
    if not folder.is_dir():
        check.add(MISSING, "folder not found")
        return
    if not (folder / stage.done_file).is_file():
        check.add(MISSING, f"{stage.done_file} not found (incomplete)")
    manifests = sorted(folder.rglob(MANIFEST))
    if not manifests:
        check.add(MISSING, "no manifest.json")
    for path in manifests:
        manifest = load_json(path, check, path.relative_to(out).as_posix())
        if isinstance(manifest, dict):
            check_manifest(out, path.parent, manifest, stage, check, known_hashes)
        elif manifest is not None:
            check.add(CORRUPT, f"{path.relative_to(out).as_posix()} is not a JSON object")
    if stage.done_file == "final.json" and (folder / "final.json").is_file():
        final = load_json(folder / "final.json", check, f"{folder.name}/final.json") or {}
        target = folder / str(final.get("folder", ""))
        if current_hash(target) != final.get("manifest"):
            check.add(CORRUPT, f"{folder.name}/final.json does not point to {target.relative_to(out).as_posix()}'s "
                               "current manifest")
    if state is not None:
        check_state(out, stage, state, check)


def check_state(out: Path, stage: Stage, state: dict, check: Check) -> None:
    """pipeline.json's record of the stage against configs/ and the folders as they are now."""
    record = state.get(stage.name)
    if not isinstance(record, dict):
        check.add(MISSING, "not recorded in pipeline.json")
        return
    config_file = out / "configs" / f"{stage.name}.json"
    config = load_json(config_file, check, f"configs/{stage.name}.json")
    if config is not None and config != record.get("config"):
        check.add(STALE, f"configs/{stage.name}.json differs from the config pipeline.json recorded")
    done = stage_folder(out, stage) / stage.done_file
    if done.is_file() and sha256_file(done) != record.get("output"):
        check.add(CORRUPT, f"{done.relative_to(out).as_posix()} is not the one pipeline.json recorded "
                           "(edited, or rebuilt outside the pipeline)")
    for name, recorded in sorted((record.get("upstream") or {}).items()):
        upstream = next((s for s in STAGES if s.name == name), None)
        up_done = stage_folder(out, upstream) / upstream.done_file if upstream else None
        if up_done is None or not up_done.is_file() or sha256_file(up_done) != recorded:
            check.add(STALE, f"upstream stage '{name}' changed after this stage was built")


def pipeline_split(state: dict | None, results: Path) -> str:
    for stage in RUN_STAGES:  # every run is of the evaluated split
        split = ((state or {}).get(stage.name) or {}).get("config", {}).get("split")
        if split:
            return split
    if results.is_file():
        m = re.search(r"^# Results on `([^`]+)`", results.read_text(encoding="utf-8"), re.M)
        if m:
            return m.group(1)
    return "test"


def eval_qrels(out: Path, split: str, config: dict | None) -> dict:
    """The qrels a system was evaluated on: the collection's, limited to the first
    --max_queries queries of the eval file when the evaluation was limited."""
    from .data.collection import Collection

    qrels = Collection(out / "collection").qrels(split)
    limit = (config or {}).get("max_queries")
    if limit:
        from .eval.evaluate import read_eval_file
        kept = [q["query_id"] for q in read_eval_file(out / "instances" / "eval" / f"{split}.jsonl", limit)]
        qrels = {q: qrels[q] for q in kept if q in qrels}
    return qrels


def system_metrics(out: Path, state: dict | None, split: str) -> dict[str, tuple[dict, dict]]:
    """system -> (aggregate, per query) recomputed from runs/<system>.<split>.run."""
    from .eval.metrics import evaluate

    result = {}
    for stage in RUN_STAGES:
        run = out / "runs" / f"{stage.run.system}.{split}.run"
        if run.is_file():
            config = ((state or {}).get(stage.name) or {}).get("config")
            result[stage.run.system] = evaluate(run, eval_qrels(out, split, config), run_depth(stage, config))
    return result


def check_runs(out: Path, split: str, check: Check) -> None:
    for stage in RUN_STAGES:
        source = stage_folder(out, stage) / "run.trec"
        copy = out / "runs" / f"{stage.run.system}.{split}.run"
        if not copy.is_file():
            check.add(MISSING, f"runs/{copy.name} not found")
        elif not source.is_file():
            check.add(MISSING, f"{source.relative_to(out).as_posix()} not found")
        elif sha256_file(copy) != sha256_file(source):
            check.add(CORRUPT, f"runs/{copy.name} differs from {source.relative_to(out).as_posix()}")


TABLE_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|(.*)\|\s*$")


def parse_results(text: str) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """results.md -> ({system: {metric: cell}}, {metric: [SFT, DDRO, diff, p] cells})."""
    systems, tests, header, section = {}, {}, None, "systems"
    for line in text.splitlines():
        if line.startswith("## "):
            section, header = "ttest", None
            continue
        m = TABLE_ROW.match(line)
        if not m or set(m.group(1)) <= set("-:"):
            continue
        cells = [c.strip() for c in m.group(2).split("|")]
        if header is None:
            header = cells
        elif section == "systems":
            systems[m.group(1)] = dict(zip(header, cells))
        else:
            tests[m.group(1)] = cells
    return systems, tests


def check_results(out: Path, split: str, state: dict | None, digits: int, check: Check) -> None:
    from .eval.metrics import ordered_metrics, paired_ttest, shared_metrics

    results = out / "results.md"
    if not results.is_file():
        check.add(MISSING, "results.md not found")
        return
    systems, tests = parse_results(results.read_text(encoding="utf-8"))
    recomputed = system_metrics(out, state, split)
    for system, (aggregate, _) in recomputed.items():
        if system not in systems:
            check.add(CORRUPT, f"results.md has no row for {system}")
            continue
        # a metric beyond the run's depth must stay blank
        for metric in ordered_metrics({*aggregate, *systems[system]}):
            expected = f"{aggregate[metric]:.{digits}f}" if metric in aggregate else ""
            if systems[system].get(metric, "") != expected:
                check.add(CORRUPT, f"results.md: {system} {metric} is {systems[system].get(metric)}, "
                                   f"the run file gives {expected}")
    for system in sorted(set(systems) - set(recomputed)):
        check.add(CORRUPT, f"results.md lists {system}, which has no run file")
    if "sft" in recomputed and "ddro" in recomputed:
        for metric in shared_metrics(recomputed["sft"][1], recomputed["ddro"][1]):
            t = paired_ttest(recomputed["sft"][1], recomputed["ddro"][1], metric)
            expected = [f"{t['mean_a']:.4f}", f"{t['mean_b']:.4f}", f"{t['mean_diff']:+.4f}", f"{t['p_value']:.3g}"]
            if tests.get(metric) != expected:
                check.add(CORRUPT, f"results.md: the DDRO vs SFT t-test row for {metric} is {tests.get(metric)}, "
                                   f"the run files give {expected}")


def run(args: VerifyArguments) -> list[Check]:
    out = Path(args.output)
    if not out.is_dir():
        raise DDROError(f"{out}: not a folder")
    if not (out / STATE).is_file() and not any(stage_folder(out, s).is_dir() for s in STAGES):
        raise DDROError(f"{out}: not a pipeline output (no {STATE}, no stage folders)")
    pipeline_check = Check(STATE, STATE)
    state = load_json(out / STATE, pipeline_check, STATE)
    if state is not None and not isinstance(state, dict):
        pipeline_check.add(CORRUPT, f"{STATE} is not a JSON object")
        state = None
    known = {sha256_file(p) for p in out.rglob(MANIFEST)}
    checks = []
    for stage in STAGES:
        check = Check(stage.name, stage_folder(out, stage).relative_to(out).as_posix())
        check_stage(out, stage, state, check, known)
        checks.append(check)
    split = pipeline_split(state, out / "results.md")
    runs_check, results_check = Check("runs", "runs"), Check("results", "results.md")
    check_runs(out, split, runs_check)
    check_results(out, split, state, args.digits, results_check)
    return checks + [pipeline_check, runs_check, results_check]


def format_table(checks: list[Check]) -> str:
    rows = [("stage", "folder", "status", "details")]
    for c in checks:
        details = "; ".join(what for _, what in c.problems)
        rows.append((c.name, c.folder, c.status, details))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


@entry_point
def main(argv: Optional[list[str]] = None):
    """Re-check a pipeline output folder: `ddro verify OUT`. Prints one row per stage (and for
    pipeline.json, runs/, results.md): OK; STALE (an input, config or upstream stage changed
    after it was built); MISSING (a folder or file is gone); CORRUPT (a file no longer has its
    recorded sha256, or a record disagrees with the files). Exit status: 0 when every row is
    OK, 1 otherwise, 2 when OUT is not a pipeline folder."""
    import sys

    argv = leading_positionals(sys.argv[1:] if argv is None else argv, "--output")
    (args,) = parse_args([VerifyArguments], argv, prog="ddro verify", description=main.__doc__)
    checks = run(args)
    print(format_table(checks))
    bad = [c for c in checks if c.status != OK]
    print(f"\n{len(checks) - len(bad)}/{len(checks)} OK" + (f"; not OK: {', '.join(c.name for c in bad)}"
                                                           if bad else ""))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
