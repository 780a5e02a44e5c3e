"""Kept so that older commands still work: the feature classifier is trained by the installed command
`vqgen-feature-classifier` (pipelines/feature_classifier.py), which takes the same flags.

    python benchmarks/feature_classifier.py --dataset ../shared/data/mnist --out runs/classifier/mnist
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.feature_classifier import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
