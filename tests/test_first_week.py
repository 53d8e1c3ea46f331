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
