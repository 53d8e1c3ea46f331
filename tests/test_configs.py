"""Every option of every config group composes and instantiates; options that need absent weights or data fail,
when used, with one line (lightning-hydra-template's tests/test_configs.py is the model)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from treg_exp.common import seeding
from treg_exp.common.errors import UserError, WeightsNotFoundError, find_user_error
from treg_exp.data.base import ImageDataset
from treg_exp.experiment.config_types import check_types
from treg_exp.metrics.base import MetricSuite
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Solver
from treg_exp.tracking.base import RunLogger

CONF = Path(__file__).parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(*overrides: str, hydra_config: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=hydra_config)
    # what Hydra's runtime would provide
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = "unused"
    check_types(cfg if not hydra_config else OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    return cfg


def one_line(error: Exception) -> bool:
    return "\n" not in str(error) and len(str(error)) > 20


def test_every_group_has_options():
    for group in ["data", "task", "model", "solver", "metrics", "logger", "paths", "experiment"]:
        assert options(group), f"conf/{group} is empty"


@pytest.mark.parametrize("option", options("data"))
def test_data(option, tmp_path):
    cfg = compose_with(f"data={option}", f"paths.data_root={tmp_path}")
    if cfg.data.get("root", "") is None:  # data=folder: the folder must be given
        with pytest.raises(Exception) as error:
            instantiate(cfg.data)
        user_error = find_user_error(error.value)
        assert user_error is not None and "data.root" in str(user_error) and one_line(user_error)
        return
    dataset = instantiate(cfg.data)
    assert isinstance(dataset, ImageDataset)
    try:
        sample = dataset[0]
    except UserError as error:  # a paper dataset that is not staged here
        assert one_line(error) and str(tmp_path) in str(error)
        return
    assert sample.image.shape == (3, cfg.data.resolution, cfg.data.resolution)
    if option != "gaussian":  # draws from the Gaussian prior are exact, hence unbounded
        assert -1.0 <= sample.image.min() and sample.image.max() <= 1.0


@pytest.mark.parametrize("option", options("task"))
def test_task(option):
    cfg = compose_with(f"task={option}")
    operator = instantiate(cfg.task)
    assert isinstance(operator, LinearOperator)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    generators = seeding.batch_generators(0, ["a", "b"], seeding.MEASUREMENT)
    operator = operator.draw(generators, x.shape)
    y = operator.measure(x, generators)
    assert torch.isfinite(y).all() and y.shape[0] == 2


@pytest.mark.parametrize("option", options("model"))
def test_model(option, tmp_path):
    cfg = compose_with(f"model={option}", f"paths.weights={tmp_path}")
    prior = instantiate(cfg.model)
    assert isinstance(prior, DiffusionPrior)
    try:
        prior.load("cpu")
    except WeightsNotFoundError as error:  # real weights are not on this machine
        assert one_line(error) and "fetch_weights" in str(error)
        return
    assert prior.schedule.num_train_timesteps == 1000


@pytest.mark.parametrize("option", options("solver"))
def test_solver(option):
    cfg = compose_with(f"solver={option}")
    assert isinstance(instantiate(cfg.solver), Solver)


@pytest.mark.parametrize("path", sorted((CONF / "solver_task").glob("*.yaml")), ids=lambda p: p.stem)
def test_solver_task_specialisations_apply(path):
    """conf/solver_task/<solver>_<task>.yaml is merged into `solver` when that pair is chosen."""
    solver, task = next(
        (s, path.stem[len(s) + 1 :])
        for s in options("solver")
        if path.stem.startswith(s + "_") and path.stem[len(s) + 1 :] in options("task")
    )
    cfg = compose_with(f"solver={solver}", f"task={task}")
    specialised = OmegaConf.load(path)
    for key, value in specialised.items():
        assert cfg.solver[key] == value, f"{path.name}: solver.{key} not applied"
    assert isinstance(instantiate(cfg.solver), Solver)


def _solver_model_files() -> list[Path]:
    return sorted((CONF / "solver_model").glob("*.yaml"))


@pytest.mark.parametrize("path", _solver_model_files(), ids=lambda p: p.stem)
def test_solver_model_specialisations_apply(path):
    """conf/solver_model/<solver>_<model>.yaml is merged into `solver` when that pair is chosen (after the per-task
    values, so a prior's setting wins over a paper's), and only then. Catches a file whose name matches no solver or
    model (it would never apply), a missing `# @package solver` (keys land at the top level) and a wrong order in
    the defaults list."""
    assert path.read_text().startswith("# @package solver"), f"{path.name} must start with '# @package solver'"
    solver, model = next(
        (s, path.stem[len(s) + 1 :])
        for s in options("solver")
        if path.stem.startswith(s + "_") and path.stem[len(s) + 1 :] in options("model")
    )
    specialised = OmegaConf.load(path)
    base = OmegaConf.load(CONF / "solver" / f"{solver}.yaml")
    # the tasks with a solver_task file for this solver (which may set the same keys), and one without
    tasks = [t for t in options("task") if (CONF / "solver_task" / f"{solver}_{t}.yaml").exists()] + ["denoise"]
    for task in tasks:
        cfg = compose_with(f"solver={solver}", f"model={model}", f"task={task}")
        for key, value in specialised.items():
            assert cfg.solver[key] == value, f"{path.name}: solver.{key} not applied with task={task}"
    assert isinstance(instantiate(cfg.solver), Solver)
    # another model, without a file of its own for this solver, keeps the solver's own values
    other = next(
        m for m in options("model") if m != model and not (CONF / "solver_model" / f"{solver}_{m}.yaml").exists()
    )
    cfg = compose_with(f"solver={solver}", f"model={other}", "task=denoise")
    for key in specialised:
        assert cfg.solver[key] == base[key], f"{path.name}: solver.{key} leaked to model={other}"


def test_solver_model_files_exist():
    """The Gaussian prior's TReg settings are a solver_model file (AN off: no image encoder; its own null prompt)."""
    assert (CONF / "solver_model" / "treg_gaussian.yaml") in _solver_model_files()


def test_data_model_specialisation_applies():
    assert compose_with("model=gaussian").data.prompt == ""
    assert compose_with("model=sd15").data.prompt is None  # each photo keeps its own caption


@pytest.mark.parametrize("option", options("metrics"))
def test_metrics(option, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = compose_with(f"metrics={option}", f"paths.weights={tmp_path}")
    suite = instantiate(cfg.metrics)
    assert isinstance(suite, MetricSuite)
    try:
        suite.prepare("cpu")
    except WeightsNotFoundError as error:
        assert one_line(error) and "fetch_weights" in str(error)


@pytest.mark.parametrize("option", options("logger"))
def test_logger(option):
    cfg = compose_with(f"logger={option}")
    assert isinstance(instantiate(cfg.logger), RunLogger)


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment(option):
    cfg = compose_with(f"experiment={option}")
    for group in ["data", "task", "model", "solver", "metrics", "logger"]:
        assert instantiate(cfg[group]) is not None


@pytest.mark.parametrize("option", options("hydra/launcher"))
def test_launcher(option):
    """Each launcher option names a submitit launcher class that exists (catches a typo in ``_target_``)."""
    from hydra.utils import get_class

    cfg = compose_with(f"hydra/launcher={option}", hydra_config=True)
    bases = [f"{c.__module__}.{c.__name__}" for c in get_class(cfg.hydra.launcher._target_).__mro__]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.BaseSubmititLauncher" in bases


def test_default_choices():
    cfg = compose_with(hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.data, choices.task, choices.solver) == ("sd15", "samples", "gauss_deblur", "treg")
