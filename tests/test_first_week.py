"""A researcher's first week (issue 27): the files a newcomer looks for exist and say what they should."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_license_citation_changelog() -> None:
    """Catches a repository without a licence, a citation file that does not parse or omits the TReg / P2L papers."""
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    identifiers = {i["value"] for ref in citation["references"] for i in ref["identifiers"]}
    assert identifiers == {"arXiv:2311.15658", "arXiv:2310.01110"}
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")


def test_cuda_without_cuda_suggests_auto() -> None:
    """Catches a refusal of device=cuda on a CPU-only machine that does not say device=auto is the portable choice."""
    import pytest
    import torch

    from treg_exp.common.devices import resolve_device
    from treg_exp.common.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: device=cuda is not refused here")
    with pytest.raises(UserError, match="device=auto"):
        resolve_device("cuda")


def test_readme_names_hydra_inspection() -> None:
    """Catches a README that leaves a newcomer unaware of --cfg job, --info and shell completion."""
    readme = (ROOT / "README.md").read_text()
    for flag in ("--cfg job", "--info", "-sc install=bash"):
        assert flag in readme, flag
