"""The top layer that reads finished runs: paper tables, the HTML report, re-scoring, calibration against the exact
posterior. May read the sweep file format of :mod:`treg_exp.experiment.sweep`; nothing below imports it."""
