"""Feature-space scorers against values worked out by hand on tiny feature sets, the properties their papers
claim, and the proof that no deployable scorer learns from an anomaly."""

import math

import numpy as np
import pytest

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import ConfigError, DataError
from anomaly_repr.scoring.features import (
    FDBD,
    KNN,
    Mahalanobis,
    ReAct,
    RelativeMahalanobis,
    ViM,
    generalized_entropy,
    vim_dim,
)
from anomaly_repr.scoring.outputs import Outputs
from anomaly_repr.scoring.scorers import SCORERS, is_oracle, make_scorer, scorers_of


def outputs(z, labels=None, weight=None, bias=None) -> Outputs:
    z = np.asarray(z, dtype=np.float32)
    weight = np.eye(2, z.shape[1], dtype=np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
    bias = np.zeros(len(weight), dtype=np.float32) if bias is None else np.asarray(bias, dtype=np.float32)
    labels = np.zeros(len(z), dtype=np.int64) if labels is None else np.asarray(labels)
    return Outputs(z, z @ weight.T + bias, labels, final_layer=(weight, bias))


def test_knn_is_the_distance_to_the_kth_neighbour_on_the_unit_circle():
    angles = np.arange(8) * 2 * np.pi / 8
    circle = outputs(np.stack([np.cos(angles), np.sin(angles)], axis=1))
    query = outputs([[1.0, 0.0], [math.cos(np.pi / 8), math.sin(np.pi / 8)]])
    assert KNN(k=1).fit(circle).score(query) == pytest.approx([0.0, 2 * math.sin(np.pi / 16)], abs=1e-6)
    # The second nearest of the query between two points is the other one, at the same distance.
    assert KNN(k=2).fit(circle).score(query)[1] == pytest.approx(2 * math.sin(np.pi / 16), abs=1e-6)
    assert KNN(k=2).fit(circle).score(query)[0] == pytest.approx(2 * math.sin(np.pi / 8), abs=1e-6)


def test_knn_is_invariant_to_the_scale_of_z():
    rng = np.random.default_rng(0)
    bank, query = rng.normal(size=(300, 16)), rng.normal(size=(50, 16))
    plain = KNN(k=5).fit(outputs(bank)).score(outputs(query))
    scaled = KNN(k=5).fit(outputs(10 * bank)).score(outputs(0.1 * query))
    np.testing.assert_allclose(plain, scaled, atol=1e-5)


def two_gaussian_classes():
    """Class means (-2, 0) and (2, 0); each class is its mean + (±1, 0) and (0, ±2): the shared covariance
    is diag(0.5, 2)."""
    offsets = np.array([[1, 0], [-1, 0], [0, 2], [0, -2]], dtype=np.float64)
    z = np.concatenate([np.array([-2.0, 0.0]) + offsets, np.array([2.0, 0.0]) + offsets])
    return outputs(z, labels=[0] * 4 + [1] * 4)


def test_mahalanobis_matches_the_closed_form():
    scorer = Mahalanobis().fit(two_gaussian_classes())
    # (-1, 2) from (-2, 0): 1 / 0.5 + 4 / 2 = 4; (0, 0) is 4 / 0.5 = 8 from either mean.
    assert scorer.score(outputs([[-1.0, 2.0], [0.0, 0.0]])) == pytest.approx([4.0, 8.0])


def test_relative_mahalanobis_subtracts_the_background_distance():
    # One feature: classes at -3, -1 and 1, 3 (means -2 and 2, within-class variance 1); the background
    # Gaussian has mean 0 and variance (9 + 1 + 1 + 9) / 4 = 5.
    reference = Outputs(np.array([[-3.0], [-1.0], [1.0], [3.0]]), np.zeros((4, 2)), np.array([0, 0, 1, 1]))
    scorer = RelativeMahalanobis().fit(reference)
    query = Outputs(np.array([[0.0], [-2.0]]), np.zeros((2, 2)), np.array([0, 0]))
    assert scorer.score(query) == pytest.approx([4.0, -0.8])


def test_vim_virtual_logit_by_hand():
    # Weight = the first two axes, no bias: the origin is 0. The reference spans the first two axes with
    # second moments 2 and 2 and has 0.01 along the third: with dim 2 the residual is |z3|, 0.1 on every
    # reference row, and every reference max logit is 2, so alpha = 2 / 0.1 = 20.
    weight = [[1, 0, 0], [0, 1, 0]]
    reference = outputs([[2, 0, 0.1], [0, 2, -0.1], [2, 0, -0.1], [0, 2, 0.1]], weight=weight)
    scorer = ViM(dim=2).fit(reference)
    query = outputs([[1, 1, 0.5]], weight=weight)  # logits (1, 1)
    assert scorer.score(query) == pytest.approx([20 * 0.5 - (1 + math.log(2))], rel=1e-5)
    assert (vim_dim(512), vim_dim(768), vim_dim(2048)) == (256, 512, 1000)


def test_fdbd_distance_to_the_boundary_over_the_distance_to_the_mean():
    reference = outputs([[1, 0], [-1, 0], [0, 1], [0, -1]])  # mean 0
    # Logits (3, 1): the boundary x = y is |1 - 3| / |(0,1) - (1,0)| = sqrt 2 away, z is sqrt 10 from the mean.
    assert FDBD().fit(reference).score(outputs([[3, 1]])) == pytest.approx([-math.sqrt(2) / math.sqrt(10)])


def test_react_changes_nothing_below_its_threshold():
    rng = np.random.default_rng(1)
    reference = outputs(rng.uniform(0, 10, size=(1000, 2)))
    scorer = ReAct(percentile=90).fit(reference)
    assert scorer.threshold_ == pytest.approx(np.percentile(reference.z, 90))
    low = outputs([[1.0, 2.0]])
    energy = -np.log(np.exp(1.0) + np.exp(2.0))
    assert scorer.score(low) == pytest.approx([energy])
    high = outputs([[1.0, 50.0]])  # clipped to the threshold: the energy of (1, threshold)
    assert scorer.score(high) == pytest.approx([-np.log(np.exp(1.0) + np.exp(scorer.threshold_))])


def test_gen_is_highest_for_a_flat_softmax():
    flat, sure = np.zeros((1, 2)), np.array([[20.0, 0.0]])
    assert generalized_entropy(flat, gamma=0.1) == pytest.approx([2 * 0.5**0.2])
    assert generalized_entropy(sure)[0] < generalized_entropy(flat)[0]
    assert generalized_entropy(np.array([[3.0, 1.0, 0.0]]), top=1) == pytest.approx(
        generalized_entropy(np.array([[3.0, 1.0, 0.0]]), top=3) - sum(
            p**0.1 * (1 - p) ** 0.1 for p in sorted(np.exp([3, 1, 0]) / np.exp([3, 1, 0]).sum())[:2]))


class Tripwire(Outputs):
    """Outputs whose anomaly rows cannot be read: any access to z, logits, labels or an extra raises when
    one of its rows is an anomaly (the test uses it for every reference a deployable scorer is given)."""

    def __init__(self, inner: Outputs):
        object.__setattr__(self, "_inner", inner)

    def __getattribute__(self, name: str):
        inner = object.__getattribute__(self, "_inner")
        if name in ("z", "logits", "labels", "extras", "final_layer", "is_anomaly", "rows", "arrays"):
            if (inner.labels == -1).any():
                raise AssertionError(f"a deployable scorer read {name} of an anomaly row")
            return getattr(inner, name)
        if name in ("has",):
            return getattr(inner, name)
        return object.__getattribute__(self, name)


def deployable() -> list[str]:
    return [n for n in SCORERS if not is_oracle(n)]


def test_the_tripwire_fires_on_an_anomaly_row():
    mixed = outputs(np.ones((3, 2)), labels=[0, 1, -1])
    with pytest.raises(AssertionError, match="anomaly row"):
        KNN(k=1).fit(Tripwire(mixed))


def test_feature_scorers_refuse_a_reference_with_anomalies():
    mixed = outputs(np.random.default_rng(0).normal(size=(10, 2)), labels=[0] * 9 + [-1])
    for name in scorers_of("feature"):
        scorer = make_scorer(name, ExperimentConfig(vim_dim=1))
        if getattr(scorer, "fits_reference", False):
            with pytest.raises(DataError, match="nominal outputs only"):
                scorer.fit(mixed)


def test_the_tiers_hold_the_scorers_the_report_expects_and_oracles_are_not_deployable():
    assert scorers_of("feature") == ("knn", "mahalanobis", "rmds", "vim", "fdbd", "react", "gen")
    assert scorers_of("classic") == ("msp", "entropy", "max_logit", "energy")
    assert scorers_of("oracle") == ("oracle_rf", "oracle_linear", "oracle_knn")
    assert all(is_oracle(n) for n in scorers_of("oracle")) and not set(scorers_of("oracle")) & set(deployable())


# --- in the evaluation: every deployable scorer learns from nominal outputs and never reads a label -------

class LabelBlind(Outputs):
    """Outputs whose labels cannot be read (what a deployable scorer scores must not need them)."""

    def __init__(self, inner: Outputs):
        object.__setattr__(self, "_inner", inner)

    def __getattribute__(self, name: str):
        if name in ("labels", "is_anomaly"):
            raise AssertionError(f"a deployable scorer read the {name} of the outputs it scores")
        if name == "__class__":
            return Outputs
        return getattr(object.__getattribute__(self, "_inner"), name)


class Spy:
    """A registered scorer, its fit given a Tripwire reference and its score label-blind outputs."""

    def __init__(self, inner):
        self.inner, self.requires, self.fits_reference = inner, inner.requires, inner.fits_reference

    def fit(self, reference):
        self.inner.fit(Tripwire(reference))
        return self

    def score(self, outputs):
        return self.inner.score(LabelBlind(outputs))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier and a G-ODIN model on digits, two epochs each: (prep, fitted) by method."""
    from anomaly_repr.engine.workflow import fit, prepare

    checkpoints = tmp_path_factory.mktemp("checkpoints")
    models = {}
    for method in ("classifier", "godin"):
        # float32 (amp=false): extraction follows training's precision, and the head's z W^T + b must give
        # the logits to 1e-4 below
        prep = prepare(ExperimentConfig(method=method, epochs=2, oracle_trees=20, device="cpu", amp="false"))
        models[method] = prep, fit(prep, checkpoints / f"{method}.pt")
    return models


@pytest.mark.parametrize("reference", ["train", "val_nominal"])
def test_no_deployable_scorer_reads_an_anomaly_or_a_label(trained, monkeypatch, reference):
    import dataclasses

    import anomaly_repr.engine.evaluation as evaluation_module

    real = evaluation_module.make_scorer
    monkeypatch.setattr(evaluation_module, "make_scorer",
                        lambda name, cfg: real(name, cfg) if is_oracle(name) else Spy(real(name, cfg)))
    prep, fitted = trained["classifier"]
    prep = dataclasses.replace(prep, cfg=prep.cfg.replace(scorer_reference=reference))
    evaluation = evaluation_module.evaluate(prep, fitted.model, fitted.normalizer)
    for name in scorers_of("feature"):  # every one ran, through the spy, and scored something
        assert 0 <= evaluation.metrics[f"test/{name}/auroc"] <= 1
    train = evaluation.outputs["train"]
    assert not train.is_anomaly.any() and len(train.labels) == len(prep.split.nominal(prep.split.train,
                                                                                        prep.data.labels))
    np.testing.assert_allclose(train.z @ train.final_layer[0].T + train.final_layer[1], train.logits, atol=1e-4)


def test_godin_gets_the_feature_scorers_that_need_no_linear_head(trained):
    from anomaly_repr.engine.evaluation import evaluate

    prep, fitted = trained["godin"]
    metrics = evaluate(prep, fitted.model, fitted.normalizer).metrics
    assert {"test/knn/auroc", "test/mahalanobis/auroc", "test/rmds/auroc", "test/gen/auroc"} <= set(metrics)
    assert not {"test/vim/auroc", "test/fdbd/auroc", "test/react/auroc"} & set(metrics)


def test_a_feature_scorer_can_be_the_tuning_objective(trained, monkeypatch):
    import tuning.objective as objective
    from tuning.space import check_scorers

    check_scorers("recon_weight", ["knn", "vim"])  # deployable, so allowed as objectives
    with pytest.raises(ConfigError, match="vim"):
        check_scorers("godin", ["vim"])  # G-ODIN's head is not one linear layer
    real = objective.make_scorer
    monkeypatch.setattr(objective, "make_scorer", lambda name, cfg: Spy(real(name, cfg)))
    prep, fitted = trained["classifier"]
    value = objective.validation_auroc(prep, fitted.model, fitted.normalizer, "knn", prep.split.val)
    assert 0 <= value <= 1
