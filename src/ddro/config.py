"""Arguments: dataclasses parsed by `transformers.HfArgumentParser`, optionally from a file.

Every stage declares its arguments as dataclasses and calls `parse_args`. `--config F`
(YAML or JSON, a flat mapping of argument names) supplies values first; flags given on
the command line override them. Config values go through the same argparse type checks
as flags, and unknown keys are refused, so a typo in a config never passes silently.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .distributed import leave_process_group
from .errors import DDROError, InputError
from .io import write_json

CONFIG_FILE = "config.json"
# OS errors reported as one line (exit 2) by `entry_point`; outputs are atomic, so nothing half-written remains
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT}


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DDROError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, f"invalid UTF-8 ({e.reason})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON ({e.msg})", e.lineno) from None
    except Exception as e:  # yaml.YAMLError: report on one line, never a traceback
        mark = getattr(e, "problem_mark", None)
        reason = getattr(e, "problem", None) or str(e)
        raise InputError(path, f"not valid YAML ({' '.join(str(reason).split())})",
                         mark.line + 1 if mark is not None else None) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DDROError(f"{path}: a config file must be a mapping of argument names to values")
    return data


def _as_flags(config: dict[str, Any], parser: argparse.ArgumentParser, source: str) -> list[str]:
    """Turn config entries into command-line flags so argparse type-checks them."""
    actions: dict[str, argparse.Action] = {}
    for a in parser._actions:  # the first action per name: a bool's `--no_x` twin comes second
        actions.setdefault(a.dest, a)
    flags: list[str] = []
    for key, value in config.items():
        if not isinstance(key, str):  # YAML 1.1 reads a bare `on:`/`no:` key as a boolean
            raise DDROError(f"{source}: key {key!r} is not a name (quote it)")
        dest = key.replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            raise DDROError(f"{source}: unknown key '{key}'")
        action = actions[dest]
        option = action.option_strings[0]
        if value is None:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        if isinstance(value, (list, tuple)):
            if action.nargs not in ("+", "*"):
                raise DDROError(f"{source}: key '{key}' takes a single value, got a list")
            values = [str(v).lower() if isinstance(v, bool) else str(v) for v in value]
        elif isinstance(value, dict):
            raise DDROError(f"{source}: key '{key}' takes a single value, got a mapping")
        else:
            values = [str(value)]
        for v in values:
            _check_value(parser, action, v, f"{source}: key '{key}'")
        flags += [option, *values]
    return flags


def _check_value(parser: argparse.ArgumentParser, action: argparse.Action, value: str, where: str) -> None:
    """argparse's own type and choices checks, but reported on one line naming the config file and
    key (argparse would print the usage and blame the flag); like argparse, it exits with status 2."""
    if "\0" in value:
        raise DDROError(f"{where}: value contains a NUL character")
    where = f"{where} ({action.option_strings[0]})"
    try:
        converted = action.type(value) if callable(action.type) else value
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        kind = getattr(action.type, "__name__", "value")
        parser.exit(2, f"error: {where}: {value!r} is not a valid {'boolean' if 'bool' in kind else kind}\n")
    if action.choices is not None and converted not in action.choices:
        parser.exit(2, f"error: {where}: {value!r} is not one of {', '.join(map(str, action.choices))}\n")


def build_parser(types: Sequence[type], prog: str | None, description: str | None):
    from transformers import HfArgumentParser  # heavy import: only when a stage really runs

    parser = HfArgumentParser(list(types), prog=prog, description=description,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="YAML/JSON file of argument values; flags given here override it")
    return parser


class ArgumentsChecked(Exception):
    """Raised by `parse_args` under `check_arguments` once the arguments parsed: the stage stops there."""

    def __init__(self, parsed: tuple):
        super().__init__("arguments checked")
        self.parsed = parsed


_CHECKING: list[tuple[dict, str]] = []  # (config, source) while `check_arguments` runs


def check_arguments(main: Callable, config: dict[str, Any], source: str) -> tuple:
    """Parse `config` with the very parser of the stage entry point `main`, without running the stage.

    Unknown keys, wrong types and missing required arguments raise a one-line DDROError naming
    `source` (e.g. a preset's section); returns the parsed dataclasses.
    """
    _CHECKING.append((config, source))
    try:
        getattr(main, "__wrapped__", main)([])  # the stage's main itself, not its error-printing wrapper
    except ArgumentsChecked as done:
        return done.parsed
    finally:
        _CHECKING.pop()
    raise DDROError(f"{source}: its entry point ran without parsing its arguments with parse_args")


def _parse_checked(parser, types: Sequence[type]) -> None:
    config, source = _CHECKING[-1]

    def exit_(status: int = 0, message: str | None = None):  # `_check_value`'s messages name the source
        raise DDROError((message or f"{source}: invalid arguments").strip().removeprefix("error: "))

    def error(message: str):  # argparse's own, e.g. a required argument missing
        raise DDROError(f"{source}: {message}")
    parser.exit, parser.error = exit_, error
    try:
        parsed = parser.parse_args_into_dataclasses(_as_flags(config, parser, source), return_remaining_strings=True)
    except ValueError as e:  # a dataclass's own checks (TrainingArguments.__post_init__)
        raise DDROError(f"{source}: {' '.join(str(e).split())}") from None
    raise ArgumentsChecked(tuple(parsed[:len(types)]))


def parse_args(types: Sequence[type], argv: Sequence[str] | None = None, *,
               prog: str | None = None, description: str | None = None) -> tuple:
    """Parse `argv` (default: sys.argv[1:]) into instances of the dataclasses `types`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(types, prog, description)
    if _CHECKING:
        _parse_checked(parser, types)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        argv = _as_flags(load_config_file(known.config), parser, known.config) + argv
    # HfArgumentParser appends a namespace of non-dataclass options (--config) and the
    # leftover strings; only the dataclasses are wanted.
    *parsed, remaining = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return tuple(parsed[:len(types)])


# Arguments that say how to write, not what: left out of recorded configs so that a
# rebuild with --overwrite has the same manifest as the first build.
NOT_RECORDED = ("overwrite",)


def as_dict(*args: Any) -> dict[str, Any]:
    """Resolved arguments as one flat mapping (what `--config` accepts back)."""
    merged: dict[str, Any] = {}
    for a in args:
        merged.update(dataclasses.asdict(a))
    for key in NOT_RECORDED:
        merged.pop(key, None)
    return merged


def save_config(folder: str | Path, *args: Any) -> None:
    """Write the resolved arguments next to a run's outputs as `config.json`."""
    write_json(Path(folder) / CONFIG_FILE, as_dict(*args))


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # lists every CPU build it tries


def entry_point(main: Callable[[Sequence[str] | None], Any]) -> Callable[[Sequence[str] | None], None]:
    """Wrap a stage's `main` so user errors print one line and exit 2 (no traceback)."""
    def wrapped(argv: Sequence[str] | None = None) -> None:
        from . import manifest
        if argv is None:  # run as `python -m ddro.<module>`
            module = main.__module__.removesuffix(".__main__").removesuffix(".cli")
            manifest.COMMAND = ["python", "-m", module, *sys.argv[1:]]
        setup_logging()
        try:
            main(argv)
            leave_process_group()
        except DDROError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as e:  # disk full, no permission, a file gone: the user's to fix, not a bug
            if e.errno not in USER_ERRNOS:
                raise
            print(f"error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
    wrapped.__doc__ = main.__doc__
    wrapped.__wrapped__ = main
    return wrapped
