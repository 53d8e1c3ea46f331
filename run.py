"""Entry point: ``python run.py solver=treg task=gauss_deblur`` (see README.md and conf/)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from treg_exp.app import main as app_main

    app_main(cfg)


if __name__ == "__main__":
    main()
