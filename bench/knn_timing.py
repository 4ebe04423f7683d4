"""How long the knn scorer takes: fit on 21,600 nominal training features and score 12,000 test images
(CIFAR-10 split 0's sizes), for feature widths 64 (ResNet-8/20) and 512 (ResNet-18), k = 50, exact search.
Random features: the time depends on the sizes alone. Prints the median of --rounds.

    python bench/knn_timing.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import hardware

from anomaly_repr.scoring.features import KNN
from anomaly_repr.scoring.outputs import Outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{hardware()}, medians of {args.rounds} rounds")
    for width in (64, 512):
        bank = Outputs(rng.normal(size=(21_600, width)).astype(np.float32), np.zeros((21_600, 6), np.float32),
                       np.zeros(21_600, dtype=np.int64))
        test = Outputs(rng.normal(size=(12_000, width)).astype(np.float32), np.zeros((12_000, 6), np.float32),
                       np.zeros(12_000, dtype=np.int64))
        fit, score = [], []
        for _ in range(args.rounds):
            began = time.perf_counter()
            scorer = KNN(k=50).fit(bank)
            fit.append(time.perf_counter() - began)
            began = time.perf_counter()
            scorer.score(test)
            score.append(time.perf_counter() - began)
        print(f"  width {width:3d}: fit {statistics.median(fit):.3f} s, score 12,000 x 21,600: "
              f"{statistics.median(score):.3f} s")


if __name__ == "__main__":
    main()
