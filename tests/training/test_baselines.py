"""Classical baselines on real bundled data, fitted on the data module's own folds and
feature arrays (after its missing-data policy), as `radfusion cv` fits them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import StratifiedKFold

from radfusion.training.cv.arrays import Outcome, features_of, outcome_of
from radfusion.training.cv.baselines import RidgeCox, make_baseline
from radfusion.training.cv.metrics import fold_metric
from radfusion.training.data import RadfusionDataModule
from radfusion.training.folds import assign_folds
from tests.support.real_cohorts import RealCohort, write_cohort

FOLDS = 5


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> RealCohort:
    """sksurv's 198-patient expression cohort (76 genes, age/size/grade/ER), untouched."""
    return write_cohort("breast_cancer", tmp_path_factory.mktemp("breast_cancer"))


@pytest.fixture(scope="module")
def fold_arrays(breast_cancer: RealCohort) -> list[dict]:
    folds = []
    for fold in range(FOLDS):
        dm = RadfusionDataModule(
            str(breast_cancer.path),
            target="event",
            labels=("censored", "event"),
            time_column="time",
            event_column="event",
            clinical_numeric=breast_cancer.numeric,
            clinical_categorical=breast_cancer.categorical,
            cache="none",
            folds=FOLDS,
            fold=fold,
        )
        dm.setup()
        train, test = dm.records["train"] + dm.records["val"], dm.records["test"]
        presence = [dm.modalities.index("expression")]
        folds.append(
            {
                "x_train": features_of(train, genomics=True, clinical=True, presence=presence),
                "x_test": features_of(test, genomics=True, clinical=True, presence=presence),
                "train": outcome_of(train),
                "test": outcome_of(test),
                "test_ids": {r["patient_id"] for r in test},
            }
        )
    return folds


def test_the_folds_are_the_shared_stratified_ones(breast_cancer: RealCohort, fold_arrays: list[dict]) -> None:
    table = pd.read_csv(breast_cancer.path / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    dealt = assign_folds(table, FOLDS, 0, "event")
    assert [f["test_ids"] for f in fold_arrays] == [set(dealt.index[dealt == k]) for k in range(FOLDS)]
    events = [int(f["test"].event.sum()) for f in fold_arrays]
    assert sum(events) == breast_cancer.n_events == 51 and max(events) - min(events) <= 1
    # 76 genes, their presence bit, age, size and the encoded grade and ER levels.
    assert all(f["x_train"].shape[1] > 76 + 1 + 2 and np.isfinite(f["x_train"]).all() for f in fold_arrays)


@pytest.mark.slow  # 5 folds x inner CV: about 20 s, the lifelines ridge search most of it
@pytest.mark.parametrize("name", ["coxnet", "rsf", "cox_ridge"])
def test_survival_baselines_beat_chance_on_the_expression_cohort(name: str, fold_arrays: list[dict]) -> None:
    cindex = []
    for f in fold_arrays:
        # Two ridge penalties keep the lifelines search short; the default grid has six.
        model = RidgeCox(penalizers=(0.1, 1.0)) if name == "cox_ridge" else make_baseline(name)
        model.fit(f["x_train"], f["train"])
        cindex.append(fold_metric(True, model.predict(f["x_test"]), f["test"]))
    # Published 5-fold c-indices on this cohort are about 0.66-0.70; chance is 0.5.
    assert np.mean(cindex) > 0.6, cindex


@pytest.mark.parametrize(
    ("dataset", "name"), [(d, n) for d in ("binary", "wine") for n in ("logistic", "gradient_boosting")]
)
def test_classification_baselines_on_bundled_tables(dataset: str, name: str) -> None:
    x, y = (load_breast_cancer if dataset == "binary" else load_wine)(return_X_y=True)
    n_classes = len(np.unique(y))
    outcome = Outcome(label=y, time=np.zeros(len(y)), event=np.zeros(len(y), dtype=int))
    auroc = []
    for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(x, y):
        model = make_baseline(name, n_classes=n_classes).fit(x[train], outcome.take(train))
        probs = model.predict(x[test])
        assert probs.shape == (len(test), n_classes) and np.allclose(probs.sum(axis=1), 1.0)
        auroc.append(fold_metric(False, probs, outcome.take(test)))
    assert np.mean(auroc) > 0.95, auroc


def test_a_class_missing_from_training_gets_probability_zero() -> None:
    x, y = load_wine(return_X_y=True)
    kept = y < 2
    outcome = Outcome(label=y[kept], time=np.zeros(kept.sum()), event=np.zeros(kept.sum(), dtype=int))
    probs = make_baseline("logistic", n_classes=3).fit(x[kept], outcome).predict(x[:5])
    assert probs.shape == (5, 3) and (probs[:, 2] == 0).all() and np.allclose(probs.sum(axis=1), 1.0)


def test_unknown_baseline_is_named() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'svm'"):
        make_baseline("svm")
