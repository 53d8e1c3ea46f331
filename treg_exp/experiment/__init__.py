"""The top layer that runs things: the Hydra app, the runner, table sweeps, multirun job reports, the cost estimate."""
