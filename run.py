"""Entry point: ``python run.py solver=treg task=gauss_deblur`` (see README.md and conf/)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from treg_exp.app import main as app_main

    return app_main(cfg)  # the objective metric of an optimising sweep (null objective: None)


if __name__ == "__main__":
    main()
