"""``experiment=compare_2025_ffhq``: the 2025 solvers beside TReg and P2L in one table."""

from __future__ import annotations


def test_compare_2025_plans_every_method_at_its_priors_size(tmp_path, capsys) -> None:
    """The preset plans 7 methods × 4 tasks with no row skipped (a solver missing from the checkout, or a row whose
    overrides do not compose, would be skipped), the cost estimate comes first, and each prior runs at its own size:
    DAPS on ADM FFHQ at 256, FlowDPS on SD3.5 medium at 1024, LATINO with the LCM-LoRA, the rest on SD 1.5 at 512.
    Catches a row that silently runs on the wrong prior or resolution."""
    from treg_exp.experiment.plan import main

    assert main(["experiment=compare_2025_ffhq", f"paths.output_root={tmp_path}", "paths.data_root=/absent"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep: 28 jobs, 28 to run, 0 skipped")
    jobs = [line for line in out.splitlines() if line.startswith("  ") and "images ×" in line]
    assert len(jobs) == 28
    by_solver: dict[str, list[str]] = {}
    for job in jobs:
        by_solver.setdefault(job.split("/")[1], []).append(job)
    assert sorted(by_solver) == sorted(["treg", "p2l", "psld", "daps", "latent_daps", "flowdps", "latino"])
    assert all("data=ffhq256,model=adm_ffhq256" in j for j in by_solver["daps"])
    assert all("data=ffhq1024,model=sd35_medium" in j for j in by_solver["flowdps"])
    assert all("lcm-lora-sdv1-5" in j for j in by_solver["latino"])
    assert "missing (4 jobs): data.root: folder not found: /absent/ffhq256" in out
    assert "missing (4 jobs): data.root: folder not found: /absent/ffhq1024" in out
    assert "missing (20 jobs): data.root: folder not found: /absent/ffhq512" in out
    assert out.index("cost: 28 jobs") < out.index("nothing was run")
