"""Test-wide settings: never touch the network, keep runs small."""

import os

# One intra-op thread: the tests run many small tensor operations, where a second thread buys little and, when other
# processes share the 2 cores (the suite's own subprocesses, other jobs), spin-waits (measured 5–15× slower).
# Set before torch is imported so that the runs the tests start as subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# No test may reach the Hugging Face Hub or W&B servers; real-weight paths must fail fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402 - after the environment above

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
