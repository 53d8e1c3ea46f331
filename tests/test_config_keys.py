"""Every constructor argument of every configured object has a key in its YAML (issue 18).

For each ``_target_`` in ``conf/{solver,model,task,metrics,data,logger}/*.yaml`` (nested ones too: a metric suite's
metrics), the parameters of the constructor (following ``**kwargs`` up the class hierarchy, as PSLD → GML-DPS → the
DPS family) are exactly the YAML's keys, each parameter carries a type hint (config values are validated against
them), and each key of a solver, operator, metric or prior YAML is documented by a comment on its line or on the line
above. A new constructor argument without a key, or a key the constructor does not take, fails here.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from treg_exp.experiment.config_types import constructor_parameters

CONF = Path(__file__).parents[1] / "conf"
GROUPS = ("solver", "model", "task", "metrics", "data", "logger", "prompt", "prompt/captioner")
#: YAMLs whose keys another branch in flight (issue 26: pixel solvers; issue 20: priors) is editing when this test
#: was written: their comments are checked once those branches are merged (the lead removes the entry then).
COMMENTS_PENDING: set[str] = set()


def _target(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _targets(node, where: str):
    """``(where, node)`` for every mapping with a ``_target_`` inside ``node``."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield where, node
        for key in node:
            yield from _targets(node._get_node(key), f"{where}.{key}")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _targets(node._get_node(i), f"{where}[{i}]")


YAMLS = sorted(p for group in GROUPS for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_yaml_keys_are_the_constructor_arguments(path: Path) -> None:
    """Keys = constructor parameters, each with a type hint. Catches an argument added without its YAML key (that
    knob could then only be set with ``+solver.<name>=``) or a YAML key nothing takes."""
    config = OmegaConf.load(path)
    for where, node in _targets(config, path.stem):
        parameters = constructor_parameters(_target(node._target_))
        keys = {str(k) for k in node if not str(k).startswith("_") and k != "defaults"}  # defaults: Hydra's list
        missing, unknown = sorted(set(parameters) - keys), sorted(keys - set(parameters))
        assert not missing and not unknown, f"{where} ({node._target_}): missing {missing}, unknown {unknown}"
        untyped = [n for n, p in parameters.items() if p.annotation is inspect.Parameter.empty]
        assert not untyped, f"{node._target_}: parameters without a type hint: {untyped}"


@pytest.mark.parametrize(
    "path",
    [p for p in YAMLS if p.parent.name in ("solver", "task", "metrics", "model", "prompt", "captioner")],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_every_key_has_a_comment(path: Path) -> None:
    """Each top-level key of a solver, operator, metric, prior, prompt-source or captioner YAML is explained on its
    line or the line above."""
    if f"{path.parent.name}/{path.name}" in COMMENTS_PENDING:
        pytest.skip("edited by another branch in flight; checked once it is merged (COMMENTS_PENDING)")
    lines = path.read_text().splitlines()
    bare = [
        line.split(":")[0]
        for i, line in enumerate(lines)
        if line[:1].isalpha()
        and ":" in line
        and not line.startswith(("_target_", "defaults"))
        and "#" not in line
        and not (i > 0 and lines[i - 1].lstrip().startswith("#"))
    ]
    assert not bare, f"{path.name}: keys without a comment: {bare}"
