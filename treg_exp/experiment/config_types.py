"""Every config value checked against its type once, where the config enters, before anything is built or loaded.

The types come from where the values go: a ``_target_`` node's keys are its constructor's arguments, and their
type hints (``typing.get_type_hints``, following ``**kwargs`` up the class hierarchy) are the schema, so a solver,
prior, task, dataset, metric, prompt source or logger added on another branch is checked without a line here
(``tests/test_config_keys.py`` makes every argument carry a hint). The run's own keys (``seed``, ``batch_size``,
``shard.*`` ...) are the fields of :class:`RunKeys`.

The check is strict, as the run must be the run recorded: an integer is an ``int`` (not ``2.5``, ``"3"`` nor
``true``), a float an ``int`` or ``float`` (not a string), a bool ``true``/``false`` (not ``2``), a string not a list
or a mapping, a list not a scalar. A mismatch is one :class:`UserError` line naming the key, the value and the
type; ranges and choices are the constructors' business.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from treg_exp.common.errors import UserError


@dataclass
class ShardKeys:
    index: int  # this process's shard
    count: int  # shards in all


@dataclass
class RunKeys:
    """The keys of ``conf/config.yaml`` that are not a group with a ``_target_`` (their comments are there)."""

    seed: int
    batch_size: int
    num_samples: int
    device: str
    shard: ShardKeys
    compare: list[str]
    fail_fast: bool
    objective: str | None
    one_gpu_per_job: bool
    paths: dict[str, str | None]


def _callables(target: Any) -> list[Callable[..., Any]]:
    """The functions whose keyword parameters ``target(...)`` takes: a function, or a class's ``__init__`` and, while
    they pass ``**kwargs`` on, those of its base classes."""
    if not inspect.isclass(target):
        return [target]
    found = []
    for cls in target.__mro__:
        if "__init__" not in vars(cls):
            continue
        found.append(cls.__init__)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
            break
    return found


def constructor_parameters(target: Any) -> dict[str, inspect.Parameter]:
    """The keyword parameters ``target(...)`` accepts, followed through ``**kwargs`` to the base classes."""
    found: dict[str, inspect.Parameter] = {}
    for function in _callables(target):
        for index, p in enumerate(inspect.signature(function).parameters.values()):
            if inspect.isclass(target) and index == 0:
                continue  # self
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                found.setdefault(p.name, p)
    return found


@functools.cache
def constructor_types(target_path: str) -> tuple[dict[str, Any], bool]:
    """``({parameter: type hint}, takes other keywords)`` of the ``_target_`` ``target_path``."""
    try:
        target = get_object(target_path)
    except Exception as error:  # noqa: BLE001 - Hydra's import errors come in several types
        raise UserError(f"_target_ {target_path} cannot be imported ({type(error).__name__}: {error})") from None
    hints: dict[str, Any] = {}
    functions = _callables(target)
    for function in reversed(functions):  # a subclass's hint wins
        hints.update(typing.get_type_hints(function))
    last = inspect.signature(functions[-1]).parameters.values()
    open_ended = any(p.kind is p.VAR_KEYWORD for p in last)
    parameters = constructor_parameters(target)
    return {name: hints.get(name, Any) for name in parameters}, open_ended


#: what a list of each type holds, in words
PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


# --- one value against one type hint ---------------------------------------------------------------------------
def describe(hint: Any) -> str:
    """``int`` → "an integer", ``list[str] | None`` → "a list of strings or null" ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {PLURALS.get(args[0], 'values')}" if args else "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a plain container value) is of type ``hint``; a class the config cannot spell takes a
    string naming it or a ``_target_`` node (a metric, a captioner), which is checked against its own constructor."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list):
            return False
        inner = args[0] if args else Any
        return all(_is_target(v) or matches(v, inner) for v in value)
    if origin in (dict, collections.abc.Mapping):
        value_hint = args[1] if len(args) == 2 else Any
        return isinstance(value, dict) and all(matches(v, value_hint) for v in value.values())
    if hint in (dict, list):
        return isinstance(value, hint)
    # a type YAML cannot spell (torch.dtype, os.PathLike, an enum, a metric object): a string that names one, or
    # an object built from a _target_ node; never a number, a bool, a list or a plain mapping
    return isinstance(value, str) or _is_target(value)


def _is_target(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def _shown(value: Any) -> str:
    if value in ("", None):
        return "an empty value" if value == "" else "null"
    kind = {bool: "a bool", int: "an integer", float: "a float", str: "a string", list: "a list", dict: "a mapping"}
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return f"{text} ({kind.get(type(value), type(value).__name__)})"


def mismatch(key: str, value: Any, hint: Any) -> str | None:
    """The one line for ``key=value`` when it is not of type ``hint``, else ``None``."""
    if matches(value, hint):
        return None
    return f"{key} must be {describe(hint)}, got {_shown(value)}"


# --- the whole config ------------------------------------------------------------------------------------------
def _problems_of_target(node: dict[str, Any], where: str) -> Iterator[str]:
    hints, open_ended = constructor_types(str(node["_target_"]))
    for key, value in node.items():
        if str(key).startswith("_") or key == "defaults":
            continue
        name = f"{where}.{key}" if where else str(key)
        if key not in hints:
            if not open_ended:
                yield f"{name} is not a key of {node['_target_']} (its keys: {', '.join(hints)})"
            continue
        problem = mismatch(name, value, hints[key])
        if problem is not None:
            yield problem
        yield from _problems_inside(value, name)


def _problems_inside(value: Any, where: str) -> Iterator[str]:
    """The ``_target_`` nodes nested in ``value`` (a metric suite's metrics, a prompt source's captioner)."""
    if _is_target(value):
        yield from _problems_of_target(value, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _problems_inside(item, f"{where}[{index}]")


def _problems_of_run_keys(config: dict[str, Any], schema: type, where: str = "") -> Iterator[str]:
    hints = typing.get_type_hints(schema)
    for spec in fields(schema):
        if spec.name not in config:
            continue
        name, value, hint = f"{where}{spec.name}", config[spec.name], hints[spec.name]
        if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
            if not isinstance(value, dict):
                yield f"{name} must be a mapping, got {_shown(value)}"
            else:
                yield from _problems_of_run_keys(value, hint, f"{name}.")
        elif (problem := mismatch(name, value, hint)) is not None:
            yield problem


def check_types(cfg: DictConfig) -> None:
    """Raise one :class:`UserError` line for the first config value that is not of its type (nothing else runs
    first: this is where the config enters). Groups without a ``_target_`` and keys nothing declares are left to
    their readers."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(config, dict):
        raise UserError("the config must be a mapping")
    problems = list(_problems_of_run_keys(config, RunKeys))
    for group, value in config.items():
        if _is_target(value):
            problems += list(_problems_of_target(value, str(group)))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
