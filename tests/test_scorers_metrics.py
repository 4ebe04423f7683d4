import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import DataError
from anomaly_repr.scoring.metrics import anomaly_metrics, closed_set_accuracy, fpr_at_tpr
from anomaly_repr.scoring.outputs import Outputs
from anomaly_repr.scoring.scorers import (
    SCORERS,
    applies,
    energy,
    entropy,
    is_oracle,
    make_scorer,
    max_logit,
    msp,
)


def test_perfectly_separated_scores_give_auroc_one_and_reversed_zero():
    is_anomaly = np.array([False] * 50 + [True] * 50)
    scores = np.linspace(0, 1, 100)
    m = anomaly_metrics(scores, is_anomaly)
    assert m["auroc"] == 1.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0 and m["fpr95"] == 0.0
    r = anomaly_metrics(-scores, is_anomaly)
    assert r["auroc"] == 0.0 and r["fpr95"] == 1.0


def test_fpr95_known_answer():
    # 20 anomalies at scores 1..20; nominals at 0.5 (below all) and 10.5 (flagged once 10 anomalies are).
    anomalies, nominals = np.arange(1, 21, dtype=float), np.array([0.5] * 8 + [10.5] * 2)
    scores = np.concatenate([nominals, anomalies])
    is_anomaly = np.array([False] * 10 + [True] * 20)
    assert fpr_at_tpr(scores, is_anomaly) == pytest.approx(0.2)  # 95 % of anomalies needs threshold <= 2


def test_metrics_need_both_classes():
    with pytest.raises(DataError, match="both"):
        anomaly_metrics(np.ones(4), np.zeros(4, dtype=bool))


def test_one_sign_flat_logits_score_higher_than_confident_ones():
    confident = np.array([[10.0, 0.0, 0.0]])
    flat = np.array([[1.0, 1.0, 1.0]])
    for fn in (msp, entropy, max_logit, energy):
        assert fn(flat)[0] > fn(confident)[0], fn.__name__


def test_score_values():
    logits = np.log(np.array([[0.5, 0.25, 0.25]]))
    assert msp(logits)[0] == pytest.approx(0.5)
    assert entropy(logits)[0] == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)))
    assert max_logit(logits)[0] == pytest.approx(-np.log(0.5))
    assert energy(logits)[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_every_registered_scorer_is_an_estimator(name):
    rng = np.random.default_rng(0)
    out = Outputs(z=rng.normal(size=(40, 4)).astype(np.float32), logits=rng.normal(size=(40, 3)).astype(np.float32),
                  labels=np.array([0, 1, 2, -1] * 10), recon_error=rng.random(40), godin_h=rng.normal(size=(40, 3)),
                  godin_g=rng.random(40) + 0.1, godin_h_perturbed=rng.normal(size=40),
                  rotation_logp=-rng.random((40, 4)), geom_logp=-rng.random((40, 8)),
                  geom_dirichlet_nll=rng.normal(size=40), recolor_logp=-rng.random((40, 6)), sobel_error=rng.random(40),
                  member_logits=rng.normal(size=(40, 3, 3)), member_z=rng.normal(size=(40, 3, 4)),
                  jem_logpx=rng.normal(size=40), jem_pxgrad=rng.random(40), csi_ens=rng.random(40),
                  csi_unlabeled=rng.normal(size=40),
                  final_layer=(rng.normal(size=(3, 4)).astype(np.float32), np.zeros(3, dtype=np.float32)))
    scorer = make_scorer(name, ExperimentConfig(oracle_trees=10, oracle_neighbors=3, knn_k=5))
    reference = out if is_oracle(name) else out.rows(~out.is_anomaly)  # only oracles learn from anomalies
    assert not [k for k in vars(scorer) if k.endswith("_")]  # the constructor stores parameters only
    with pytest.raises(NotFittedError, match="fit"):
        scorer.score(out)
    assert scorer.fit(reference) is scorer
    scores = scorer.score(out)
    assert scores.shape == (40,) and np.isfinite(scores).all()
    assert np.array_equal(scorer.score(out), scores)  # scoring twice changes nothing fitted


def test_model_specific_scorers_apply_only_where_their_outputs_exist():
    plain = Outputs(z=np.zeros((2, 2)), logits=np.zeros((2, 2)), labels=np.array([0, -1]))
    cfg = ExperimentConfig()
    assert applies(make_scorer("max_logit", cfg), plain) and applies(make_scorer("oracle_rf", cfg), plain)
    for name in ("recon_error", "godin", "godin_quotient", "godin_g", "rotation", "rotation_only", "geom",
                 "geom_dirichlet", "recolor", "sobel_error", "ens_msp", "ens_entropy", "mutual_info", "ens_max_logit",
                 "ens_energy", "disagreement", "jem_px", "jem_py", "jem_pxgrad", "csi", "csi_ens", "csi_unlabeled"):
        assert not applies(make_scorer(name, cfg), plain)
        with pytest.raises(ValueError, match="lack"):
            make_scorer(name, cfg).fit(plain).score(plain)


def test_godin_scores_follow_the_one_sign():
    h = np.array([[0.9, 0.1], [0.2, 0.3]])
    g = np.array([0.5, 0.5])
    out = Outputs(z=np.zeros((2, 2)), logits=h / g[:, None], labels=np.array([0, -1]), godin_h=h, godin_g=g,
                  godin_h_perturbed=h.max(axis=1))
    cfg = ExperimentConfig()
    for name in ("godin", "godin_quotient"):
        s = make_scorer(name, cfg).fit(out).score(out)
        assert s[1] > s[0], name  # the image with the lower max h is the more anomalous
    assert make_scorer("godin_g", cfg).fit(out).score(out).tolist() == [-0.5, -0.5]


def test_closed_set_accuracy_ignores_anomalies():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 1.0]])
    assert closed_set_accuracy(logits, np.array([0, 0, -1, 1])) == pytest.approx(2 / 3)


def test_outputs_round_trip(tmp_path):
    out = Outputs(z=np.ones((3, 2), np.float32), logits=np.zeros((3, 4), np.float32), labels=np.array([0, -1, 1]))
    out.save(tmp_path / "o.npz")
    back = Outputs.load(tmp_path / "o.npz")
    assert np.array_equal(back.labels, out.labels) and back.is_anomaly.tolist() == [False, True, False]
