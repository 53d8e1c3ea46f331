"""Costs on the full-size SD 1.5 architecture (random weights, 512 px), in one process that builds the weights once.

    python benchmarks/full_size.py --dtype bfloat16      # prints one JSON object (run_benchmarks.py runs it)

Three parts, all in the networks' dtype (``--dtype``):

1. **Passes**: seconds of one UNet call of 1 and 2 rows (a CFG pair), a VAE decode, a VAE encode, a CLIP ViT-L/14
   image pass, and the *backward* seconds of UNet, decoder and encoder (forward + backward with the prior's gradient
   checkpointing, minus the forward): what ``treg_exp.experiment.cost`` prices a ``<network>_grad_rows`` row at.
2. **Options**: the CFG pair and the decode again with ``channels_last`` weights; the pixel prior ``adm_ffhq256``'s
   UNet (random weights, 256 px, float32 as its config) forward and backward, for the pixel solvers' estimates.
3. **Solvers on a few steps**: each of :data:`FEW_STEP_RUNS` through the real runner (one 512-px photo,
   ``metrics=fast``) with this process's prior in place of the config's, under ``torch.profiler``. Every network
   method of the prior is wrapped in a ``record_function`` range, so the profile splits the wall time of the run into
   UNet, decode, encode, CLIP image, text and *outside the networks* (solver arithmetic, CG, Adam on embeddings,
   runner, metrics, writing; the runner's share is the run's wall time minus the solver call's). Backward passes run
   outside those ranges; they are reported as ``backward`` (the profiler's autograd-engine events, overlaps merged).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import compose, peak_gib, reset_peak, rss_gib, timed

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: the prior's network methods and the split names the profile reports them under
NETWORK_METHODS = {
    "eps": "unet",
    "decode": "decode",
    "encode": "encode",
    "embed_image": "clip_image",
    "embed_text": "text",
}
#: (name, overrides, steps the run has, the solver's default steps): a few steps of each solver family at 512 px.
#: TReg's 7 steps on their own DC grid have 2 DC steps (2/7 = 0.29, as its default 57 of 200).
FEW_STEP_RUNS = [
    (
        "treg",
        ["solver=treg", "solver.num_steps=7", "solver.dc_grid=null", "solver.dc_every=3", "solver.dc_until=6"],
        7,
        200,
    ),
    ("ddim", ["solver=ddim", "solver.num_steps=3"], 3, 50),
    ("ldps", ["solver=ldps", "solver.num_steps=1"], 1, 1000),
    ("psld", ["solver=psld", "solver.num_steps=1"], 1, 1000),
]


def pass_costs(prior, repeats: int) -> dict[str, float]:
    """Part 1: forward seconds of each pass and backward seconds of UNet, decoder and encoder."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, 512, 512, generator=g) * 2 - 1).to(prior.device)
    z = torch.randn(1, 4, 64, 64, generator=g).to(prior.device)
    cond = prior.embed_text(["a photo"])
    pair = (torch.cat([z, z]), torch.cat([cond, cond]))
    forward = {
        "unet_1row": lambda: prior.eps(z, 500, cond),
        "unet_2rows": lambda: prior.eps(pair[0], 500, pair[1]),
        "decode": lambda: prior.decode(z),
        "encode": lambda: prior.encode(x, mode="mean"),
        "clip_image": lambda: prior.embed_image(x),
    }
    seconds = {}
    with torch.no_grad():
        for name, fn in forward.items():
            seconds[name] = timed(fn, repeats)
    prior.set_gradient_checkpointing(True)
    differentiated = {
        "unet": (z, lambda v: prior.eps(v, 500, cond), "unet_1row"),
        "decode": (z, prior.decode, "decode"),
        "encode": (x, lambda v: prior.encode(v, mode="mean"), "encode"),
    }
    for name, (value, fn, forward_key) in differentiated.items():

        def forward_backward(value=value, fn=fn) -> None:
            leaf = value.detach().requires_grad_(True)
            torch.autograd.grad(fn(leaf).float().square().sum(), leaf)

        # one call, no warm-up (a warm-up of the decoder's alone would take half a minute): allocation included
        seconds[f"{name}_backward"] = max(timed(forward_backward, 1, warmup=False) - seconds[forward_key], 0.0)
    prior.set_gradient_checkpointing(False)
    return seconds


def channels_last_costs(prior, repeats: int) -> dict[str, float]:
    """Part 2: the CFG pair and a decode with the UNet and VAE weights in ``channels_last`` (then back)."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 64, 64, generator=g).to(prior.device)
    cond = prior.embed_text(["a photo", "a photo"])
    modules = (prior.unet, prior.vae)
    try:
        for module in modules:
            module.to(memory_format=torch.channels_last)
        with torch.no_grad():
            return {
                "unet_2rows": timed(lambda: prior.eps(z, 500, cond), repeats),
                "decode": timed(lambda: prior.decode(z[:1]), repeats),
            }
    finally:
        for module in modules:
            module.to(memory_format=torch.contiguous_format)


def adm_pass_costs(repeats: int) -> dict:
    """Part 2b: the full-size FFHQ ADM UNet at 256 px: forward seconds of 1 row and backward seconds."""
    from hydra.utils import instantiate

    prior = instantiate(compose(["model=adm_ffhq256_random"]).model).load(DEVICE)
    resolution = int(prior.architecture.image_size)
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    cond = prior.null_embedding(1)
    with torch.no_grad():
        one = timed(lambda: prior.eps(x, 500, cond), repeats)
    prior.set_gradient_checkpointing(True)

    def forward_backward() -> None:
        leaf = x.detach().requires_grad_(True)
        torch.autograd.grad(prior.eps(leaf, 500, cond).square().sum(), leaf)

    backward = max(timed(forward_backward, 1, warmup=False) - one, 0.0)
    # the pixel solvers run one branch (cfg_scale 0): a pair is priced as two rows
    seconds = {"unet_1row": one, "unet_2rows": 2 * one, "unet_backward": backward, "decode": 0.0, "encode": 0.0}
    return {"resolution": resolution, "dtype": str(prior.dtype).removeprefix("torch."), "seconds": seconds}


def label_networks(prior) -> None:
    """Wrap each network method of ``prior`` (this instance only) in a profiler range ``network:<split name>``."""
    for method, label in NETWORK_METHODS.items():
        original = getattr(prior, method)

        def wrapped(*args, _original=original, _label=f"network:{label}", **kwargs):
            with torch.profiler.record_function(_label):
                return _original(*args, **kwargs)

        setattr(prior, method, wrapped)


def profiled_run(prior, overrides: list[str]) -> dict:
    """One 512-px photo through the runner with ``prior``; wall seconds, their split, counts and peak RSS."""
    from treg_exp.experiment.app import build_runner

    cfg = compose(["model=sd15_random", *overrides, "data.limit=1", "data.resolution=512", "metrics=fast"])
    with tempfile.TemporaryDirectory() as run_dir:
        runner = build_runner(cfg, Path(run_dir))
        runner.prior = prior
        runner.progress = False
        prior.reset_counter()
        reset_peak()
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities) as profile:
            start = time.perf_counter()
            runner.run()
            wall = time.perf_counter() - start
        peak = peak_gib()
        row = json.loads(next((Path(run_dir) / "rows").glob("*.json")).read_text())
    if row.get("status") != "ok":
        raise RuntimeError(f"{overrides}: {row.get('error')}")
    split = {label: 0.0 for label in NETWORK_METHODS.values()}
    backward = 0.0
    for event in profile.key_averages():
        if event.key.startswith("network:"):
            split[event.key.removeprefix("network:")] += event.cpu_time_total / 1e6
    # top-level backward work: autograd-engine events not nested in another such event
    events = [e for e in profile.events() if e.name.startswith("autograd::engine::evaluate_function")]
    events.sort(key=lambda e: e.time_range.start)
    end = -1
    for e in events:
        if e.time_range.start >= end:
            backward += (e.time_range.end - e.time_range.start) / 1e6
            end = e.time_range.end
    split["backward"] = backward
    split["outside_networks"] = max(wall - sum(split.values()), 0.0)
    counts = {k: v for k, v in row.items() if k.endswith(("_rows", "_calls"))}
    return {
        "wall": wall,
        "solve_seconds": row["seconds"],
        "split": split,
        "counts": counts,
        "peak_rss_gib": peak,
    }


def main() -> None:
    from treg_exp.models.tiny import TinyStableDiffusionPrior

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-solvers", action="store_true", help="parts 1 and 2 only")
    parser.add_argument("--skip-adm", action="store_true", help="no ADM pass costs")
    args = parser.parse_args()
    start = time.perf_counter()
    prior = TinyStableDiffusionPrior(architecture="sd15", dtype=args.dtype).load(DEVICE)
    result = {"device": DEVICE, "dtype": args.dtype, "build_seconds": time.perf_counter() - start}
    result["weights_rss_gib"] = rss_gib("VmRSS")
    result["seconds"] = pass_costs(prior, args.repeats)
    result["channels_last"] = channels_last_costs(prior, args.repeats)
    result["peak_memory_gib"] = peak_gib()
    if not args.skip_adm:
        result["adm_ffhq256"] = adm_pass_costs(args.repeats)
    if not args.skip_solvers:
        label_networks(prior)
        runs = []
        for name, overrides, steps, default_steps in FEW_STEP_RUNS:
            run = profiled_run(prior, overrides)
            runs.append({"name": name, "overrides": overrides, "steps": steps, "default_steps": default_steps, **run})
            print(f"{name}: {run['wall']:.1f} s for {steps} steps", file=sys.stderr, flush=True)
        result["solvers"] = runs
    print(json.dumps(result))


if __name__ == "__main__":
    main()
