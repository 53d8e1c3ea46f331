"""Entry point: ``python run.py solver=treg task=gauss_deblur`` (see README.md and conf/)."""

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from treg_exp.experiment.sweep import run_folder_name

# hydra.run.dir's last part (conf/config.yaml): the command line's settings, so that the same command resumes
OmegaConf.register_new_resolver("settings_folder", lambda command_line: run_folder_name(command_line), replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Any:
    from treg_exp.experiment.app import main as app_main

    # a multirun job's outcome (for experiment.multirun.JobReport), or the objective metric of an optimising sweep
    return app_main(cfg)


if __name__ == "__main__":
    main()
