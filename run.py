"""Entry point: ``python run.py solver=treg task=gauss_deblur`` (see README.md and conf/)."""

from typing import Any

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Any:
    from treg_exp.app import main as app_main

    return app_main(cfg)  # a multirun job's outcome, for treg_exp.multirun.JobReport


if __name__ == "__main__":
    main()
