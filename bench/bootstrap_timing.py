"""How long the bootstrap intervals take at CIFAR-10 split 0's test size (12,000 images, 4,800 anomalies):
1000 stratified resamples, all four metrics (AUROC, AUPR-in, AUPR-out, FPR95), for the 15 scorers a
classifier gets, with the vectorised rank computation of `anomaly_repr/scoring/stats.py`; beside it, in the same
run, the straightforward way for one scorer (scikit-learn's metrics on each resampled copy).
Synthetic scores: the time depends on the sizes alone. Prints medians of --rounds.

    python bench/bootstrap_timing.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import hardware

from anomaly_repr.scoring.metrics import anomaly_metrics
from anomaly_repr.scoring.stats import Resamples, resampled_metrics

N_TEST, N_ANOMALY, N_SCORERS, N_RESAMPLES = 12_000, 4_800, 15, 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    is_anomaly = np.r_[np.zeros(N_TEST - N_ANOMALY, bool), np.ones(N_ANOMALY, bool)]
    scores = [rng.normal(size=N_TEST) + is_anomaly for _ in range(N_SCORERS)]
    scores[0] = np.round(scores[0], 2)  # one scorer with ties, as a saturated MSP has
    draw, vectorised, per_scorer, loop = [], [], [], []
    for _ in range(args.rounds):
        began = time.perf_counter()
        resamples = Resamples.draw(is_anomaly, N_RESAMPLES, seed=0)
        drawn = time.perf_counter()
        for s in scores:
            resampled_metrics(s, resamples)
        done = time.perf_counter()
        draw.append(drawn - began)
        vectorised.append(done - drawn)
        per_scorer.append((done - drawn) / N_SCORERS)
        began = time.perf_counter()
        nominal, anomaly = np.flatnonzero(~is_anomaly), np.flatnonzero(is_anomaly)
        for b in range(N_RESAMPLES):
            rows = np.r_[np.repeat(nominal, resamples.nominal[:, b]), np.repeat(anomaly, resamples.anomaly[:, b])]
            anomaly_metrics(scores[1][rows], is_anomaly[rows])
        loop.append(time.perf_counter() - began)
    print(f"{hardware()}; {N_TEST} test images, {N_RESAMPLES} resamples, 4 metrics; medians of {args.rounds} rounds")
    print(f"draw the resamples: {statistics.median(draw):.2f} s")
    print(f"vectorised, {N_SCORERS} scorers: {statistics.median(vectorised):.2f} s "
          f"({statistics.median(per_scorer):.3f} s per scorer)")
    print(f"scikit-learn per resample, 1 scorer: {statistics.median(loop):.2f} s "
          f"(ratio to vectorised per scorer: {statistics.median(loop) / statistics.median(per_scorer):.0f}x)")


if __name__ == "__main__":
    main()
