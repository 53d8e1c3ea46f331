"""Pool finished runs (sweeps, shards) into the paper's table, beside the paper's numbers, and a one-page report.

    python scripts/make_table.py outputs/p2l_table2_ffhq [more dirs] [--markdown t.md] [--latex t.tex] [--html r.html]
    treg-exp table outputs/p2l_table2_ffhq                        # the same

See treg_exp/reporting/make_table.py (the command line), treg_exp/reporting/tables.py (pooling, FID over the union
of shards, bold best, reference and Δ, footnotes) and treg_exp/reporting/report.py (the HTML report).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treg_exp.reporting.make_table import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
