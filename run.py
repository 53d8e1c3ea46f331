"""Entry point: ``python run.py solver=treg task=gauss_deblur`` (see README.md and conf/)."""

from typing import Any

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Any:
    from treg_exp.experiment.app import main as app_main

    # a multirun job's outcome (for experiment.multirun.JobReport), or the objective metric of an optimising sweep
    return app_main(cfg)


if __name__ == "__main__":
    main()
