"""The base layer: errors a user can act on, per-image random streams, per-image reductions, devices and dtypes, and
checks of config values. Imports nothing from treg_exp outside itself."""
