"""Prepare the food101 images of the papers' protocol (see treg_exp/data/prepare.py and README "Reproduce a table").

python scripts/prepare_food101.py --src DOWNLOADED_FOLDER [--out $TREG_DATA]
python scripts/prepare_food101.py --verify
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treg_exp.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("food101"))
