"""README's table of which solver runs on which prior agrees with what the solvers accept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.test_configs import compose_with
from treg_exp.common.errors import UserError
from treg_exp.models.gaussian import GaussianFlowPrior, GaussianPrior

ROOT = Path(__file__).resolve().parents[1]
ORACLES = {"posterior_mean", "posterior_sample"}  # the exact Gaussian oracles: not methods of the table


def readme_table() -> dict[str, tuple[str, str]]:
    """``solver → (ε column, rectified-flow column)`` of README's solver × prior table."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| solver | ε priors"))
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in re.findall(r"`(\w+)`", cells[0]):
            table[name] = (cells[1], cells[3])
    return table


def accepts(name: str, model: str, prior) -> bool:
    solver = instantiate(compose_with(f"model={model}", f"solver={name}").solver)
    try:
        solver.check_prior(prior)
    except UserError:
        return False
    return True


TABLE = readme_table()


def test_every_solver_is_in_the_table() -> None:
    """A solver added without its row in README's table fails here."""
    solvers = {p.stem for p in (ROOT / "conf" / "solver").glob("*.yaml")} - ORACLES
    assert solvers == set(TABLE), solvers ^ set(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_the_table_says_what_the_solver_accepts(name: str) -> None:
    """The ε column says "no" exactly when the solver refuses the exact Gaussian ε prior, and the rectified-flow column
    says "no" exactly when it refuses the Gaussian flow twin (each with its ``conf/solver_model`` settings for that
    prior). Catches a table that drifts from ``check_prior``."""
    eps_cell, flow_cell = TABLE[name]
    assert accepts(name, "gaussian", GaussianPrior()) == (not eps_cell.startswith("no")), eps_cell
    assert accepts(name, "gaussian_flow", GaussianFlowPrior()) == (not flow_cell.startswith("no")), flow_cell
