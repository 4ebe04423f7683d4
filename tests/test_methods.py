"""Methods as plug-ins: every registered method honours the contract, and a method defined here, in the
tests folder, runs through `reproduce` and `evaluate` without any change to the package."""

import re
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

import anomaly_repr
from anomaly_repr.cli import _study, build_parser
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.engine.device import bf16_native
from anomaly_repr.engine.workflow import new_model, prepare
from anomaly_repr.errors import ConfigError
from anomaly_repr.methods import METHODS, Method, child_config, method_for, register_method
from anomaly_repr.models.backbones import ModelOutput
from anomaly_repr.scoring.outputs import final_layer
from anomaly_repr.scoring.scorers import SCORERS, FunctionScorer, register_scorer
from anomaly_repr.study.cells import Study
from anomaly_repr.study.reproduce import run_reproduce
from anomaly_repr.tracking.runs import evaluate_logged, run_evaluate
from anomaly_repr.tracking.store import log_model

from conftest import best_deployable_auroc, markdown_tables

PACKAGE = Path(anomaly_repr.__file__).parent
FAST = ExperimentConfig(epochs=2, oracle_trees=20, device="cpu")


# --- the contract, for every registered method ------------------------------------------------------------

@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_builds_trains_and_names_its_extras(name):
    method = method_for(ExperimentConfig(method=name))
    torch.manual_seed(0)
    model = method.build(num_classes=4, in_channels=3, image_size=8)  # RGB: recolor refuses one channel
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    optimizer = torch.optim.SGD(method.param_groups(model), lr=0.01)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    method.start(Normalizer(torch.zeros(3), torch.ones(3)), torch.device("cpu"))
    loss = method.train_step(model, optimizer, x, y, lambda: torch.autocast("cpu", enabled=False))
    assert loss.ndim == 0 and torch.isfinite(loss) and not loss.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, ModelOutput) and out.logits.shape == (8, 4) and out.z.shape == (8, model.z_dim)
    extras = method.batch_extras(out, x)
    assert set(extras) <= method.extra_outputs and all(len(v) == 8 for v in extras.values())
    assert method.role in ("reference", "oracle_representation", "variant")
    assert (final_layer(model) is not None) == method.linear_head  # what vim, fdbd and react need


def test_roles_of_the_talks_methods():
    assert METHODS["classifier"].role == "reference" and METHODS["oracle_rep"].role == "oracle_representation"
    assert METHODS["oracle_rep"].all_classes and not METHODS["oracle_rep"].scores_logits
    assert METHODS["hybrid"].role == METHODS["godin"].role == "variant"


# --- the method as a config field ------------------------------------------------------------------------

def test_the_method_is_settled_by_the_config():
    assert ExperimentConfig().method == "classifier"
    assert ExperimentConfig(recon_weight=0.9).method == "hybrid"  # the shorthands of earlier versions
    assert ExperimentConfig(head="godin").method == "godin"
    assert ExperimentConfig(method="godin").head == "godin"
    assert ExperimentConfig(method="hybrid").recon_weight == 0.9  # the talk's λ
    assert ExperimentConfig(method="hybrid", dataset="cifar100", download=False).recon_weight == 0.005
    assert ExperimentConfig(method="hybrid").to_params()["method"] == "hybrid"


@pytest.mark.parametrize("change, message", [
    ({"method": "svm"}, "unknown method 'svm'"),
    ({"method": "classifier", "head": "godin"}, "method=classifier contradicts head=godin"),
    ({"method": "godin", "recon_weight": 0.5}, "method=godin contradicts recon_weight=0.5"),
    ({"head": "godin", "recon_weight": 0.5}, "select several methods"),
])
def test_contradictions_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**change)


def test_the_study_shorthands_of_earlier_versions_choose_the_children():
    def study(*args: str):
        return _study(build_parser().parse_args(["reproduce", *args]))

    assert study("--recon_weight", "0", "--godin", "false").methods == ("classifier", "oracle_rep")
    weighted = study("--recon_weight", "0.5")
    assert weighted.methods == ("classifier", "hybrid", "godin", "oracle_rep")
    assert child_config(weighted.base, "hybrid").recon_weight == 0.5
    assert child_config(weighted.base, "classifier").recon_weight == 0.0
    assert study("--recon_weight", "auto").base.recon_weight == 0.0  # the child takes the talk's λ
    assert child_config(study().base, "hybrid").recon_weight == 0.9


def test_a_child_config_resets_what_selects_other_methods():
    base = ExperimentConfig(recon_weight=0.5, godin_h="inner")
    assert child_config(base, "classifier").recon_weight == 0.0
    assert child_config(base, "hybrid").recon_weight == 0.5
    godin = child_config(base, "godin")
    assert godin.method == "godin" and godin.head == "godin" and godin.recon_weight == 0.0 and godin.godin_h == "inner"


def test_tune_targets_name_methods_with_a_search_space():
    from tuning.config import TuneConfig
    from tuning.space import method_of

    assert TuneConfig(target="hybrid").scorers == TuneConfig(target="recon_weight").scorers == ["max_logit"]
    assert TuneConfig(target="godin").scorers == ["godin"]
    assert method_of("recon_weight", ExperimentConfig(head="godin")).cfg.method == "hybrid"
    with pytest.raises(ConfigError, match="unknown target 'oracle_rep'; choose one of hybrid, godin, rotation, geom, "
                                          "recolor, sobel, svgd, jem, csi, recipe, recon_weight"):
        TuneConfig(target="oracle_rep")


# --- layering ---------------------------------------------------------------------------------------------

def test_no_method_branches_outside_the_methods_package():
    sources = [p for p in PACKAGE.rglob("*.py") if "methods" not in p.parts]
    sources += list((PACKAGE.parent / "tuning").glob("*.py"))
    pattern = re.compile(r"""kind ?== ?['"]|method ?== ?['"]|isinstance\([^)]*GodinHead|["']head\.h\.""")
    offenders = [f"{p.name}: {line.strip()}" for p in sources for line in p.read_text().splitlines()
                 if pattern.search(line)]
    assert not offenders


def test_computing_modules_make_no_mlflow_call():
    tracking_layer = {"tracking", "study"}  # the runs and what they log (sub-packages), and the CLI
    files = [p for p in PACKAGE.rglob("*.py") if not tracking_layer & set(p.relative_to(PACKAGE).parts)
             and p.name != "cli.py"]
    assert len(files) > 20  # every other module, new ones included
    assert not [p.name for p in files if re.search(r"^\s*(import|from) mlflow", p.read_text(), re.M)]


def test_log_model_leaves_the_callers_model_as_it_was(tracking):
    prep = prepare(FAST, parts=("train",))
    model = new_model(prep).train()
    model.to(memory_format=torch.channels_last)  # as training leaves it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with mlflow.start_run(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_model(model, Normalizer.fit(prep.images(prep.split.train)), prep.images(prep.split.train[:4]))
    assert not [w for w in caught if "No complete tensor" in str(w.message)]  # the pt2 writer's warning is gone
    assert model.training  # not switched to eval (nor moved) in place
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_logged_figures_are_closed(tracking):
    prep = prepare(FAST)
    plt.close("all")
    with mlflow.start_run():
        evaluate_logged(prep, new_model(prep), Normalizer.fit(prep.images(prep.split.train)))
    assert plt.get_fignums() == []


# --- a method from outside the package ---------------------------------------------------------------------

class ZNorm(Method):
    """A classifier whose own score is the negative L2 norm of z: small features, strange image."""

    extra_outputs = frozenset({"z_norm"})

    def batch_extras(self, out: ModelOutput, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z_norm": out.z.norm(dim=1)}


@pytest.fixture(scope="module")
def toy_method():
    register_method("toy_znorm")(ZNorm)
    register_scorer("neg_z_norm", "method")(lambda cfg: FunctionScorer(lambda o: -o.z_norm, ("z_norm",)))
    yield "toy_znorm"
    del METHODS["toy_znorm"], SCORERS["neg_z_norm"]


def test_a_method_defined_in_the_tests_runs_through_reproduce_and_evaluate(toy_method, tracking):
    study = Study(FAST, methods=("classifier", toy_method, "oracle_rep"))
    parent_id = run_reproduce(study)
    client = MlflowClient(tracking)
    parent = client.get_run(parent_id)
    m = parent.data.metrics
    assert parent.data.params["methods"] == "classifier,toy_znorm,oracle_rep"
    assert "test/toy_znorm/neg_z_norm/auroc" in m and "test/classifier/neg_z_norm/auroc" not in m
    rf = m["test/classifier/oracle_rf/auroc"]
    assert m["test/gain/toy_znorm/oracle_rf"] == pytest.approx(m["test/toy_znorm/oracle_rf/auroc"] - rf)
    reference = best_deployable_auroc(parent, "classifier")  # chosen on validation AUROCs
    assert m["test/q1_best_deployable"] == reference
    assert m["test/gain/toy_znorm/best_score"] == pytest.approx(best_deployable_auroc(parent, "toy_znorm") - reference)
    assert "test/q3_gap" not in m and "test/q2_gap" in m  # no hybrid in this study
    tables = markdown_tables(mlflow.artifacts.load_text(f"runs:/{parent_id}/results/auroc_table.md"))
    assert [row[0] for row in tables["oracle"][1:]] == ["classifier", "toy_znorm", "oracle_rep"]
    assert tables["method"][0] == ["model", "neg_z_norm"] and [row[0] for row in tables["method"][1:]] == ["toy_znorm"]

    [child] = client.search_runs([parent.info.experiment_id],
                                 f"tags.mlflow.parentRunId = '{parent_id}' and tags.method = 'toy_znorm'")
    assert child.data.params["method"] == "toy_znorm"
    # MLflow's UI opens the experiment on its training runs, not its GenAI view
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert child.data.tags["precision"] == ("bfloat16" if bf16_native() else "float32")  # amp=auto
    evaluated = client.get_run(run_evaluate(child.info.run_id))
    assert evaluated.data.tags["method"] == "toy_znorm"
    assert evaluated.data.metrics["test/neg_z_norm/auroc"] == pytest.approx(child.data.metrics["test/neg_z_norm/auroc"])
    with np.load(mlflow.artifacts.download_artifacts(run_id=evaluated.info.run_id,
                                                     artifact_path="outputs/test.npz")) as saved:
        assert saved["z_norm"].shape == saved["labels"].shape


# --- the fast architecture under every method --------------------------------------------------------------

@pytest.fixture(scope="module")
def small_rgb(tmp_path_factory) -> Path:
    from conftest import rgb_folder

    return rgb_folder(tmp_path_factory.mktemp("rgb"))


@pytest.mark.parametrize("name", list(METHODS))
def test_fastcnn_trains_and_evaluates_under_every_method(name, small_rgb, tmp_path):
    from anomaly_repr.engine.evaluation import evaluate
    from anomaly_repr.engine.workflow import fit

    # lr 0.1 and full batches: a few steps at the preset's lr on 36 images blow the weights up (batch norm
    # hides it in training mode; the running statistics, after 3 steps, do not)
    cfg = ExperimentConfig.create(
        preset="fast", method=name, dataset="imagefolder", data_root=str(small_rgb), epochs=1, lr=0.1,
        batch_size=12, ensemble_size=2, csi_epochs=1, jem_sgld_steps=2, jem_buffer_size=64, geom_transforms=8,
        oracle_trees=10, bootstrap=0, device="cpu", tta="flip")
    prep = prepare(cfg)
    fitted = fit(prep, tmp_path / "c.pt")
    # fastcnn's z: the last stage's 256 channels, max-pooled (an ensemble's z: its members' side by side)
    assert fitted.model.z_dim == 256 * (cfg.ensemble_size if name in ("ensemble", "svgd") else 1)
    result = evaluate(prep, fitted.model, fitted.normalizer)
    for part, outputs in result.outputs.items():
        assert outputs.z.shape[1] == fitted.model.z_dim, part
        assert all(np.isfinite(v).all() for v in outputs.arrays().values()), part
    assert result.scores and all(np.isfinite(s).all() for s in result.scores.values())
    assert result.metrics["test/tta_views"] == 2
