"""Classical baselines, fitted by their libraries on the fold's feature arrays.

Survival (Cox and discrete-time tasks; the prediction is a risk score, higher = worse):
- ``coxnet``: elastic-net Cox (scikit-survival CoxnetSurvivalAnalysis, l1_ratio 0.5),
  the penalty chosen by 5-fold inner CV on the training part (c-index) over the
  model's own path of 50 penalties;
- ``cox_ridge``: ridge-penalised Cox (lifelines CoxPHFitter, l1_ratio 0), penalizer
  chosen by the same inner CV from 0.01-3;
- ``rsf``: random survival forest (scikit-survival), 300 trees (fewer where asked:
  `radfusion evaluate` grows 100), leaves of at least 15 patients (scikit-survival's
  user-guide setting for cohorts of this size), not tuned.

Classification (binary or multi-class; the prediction is one probability per class):
- ``logistic``: elastic-net logistic regression (scikit-learn, l1_ratio 0.5,
  multinomial for more than two classes), C chosen by 5-fold stratified inner CV (AUROC);
- ``gradient_boosting``: scikit-learn HistGradientBoostingClassifier, shallow trees
  (depth 3, leaves of 10) and L2 leaf regularisation for small cohorts, not tuned.

Each pipeline drops the columns constant in its training data (an indicator or a
category level no training patient has) and, for the penalised models, standardises
the rest so one penalty treats every feature alike."""

from __future__ import annotations

import warnings
from typing import Protocol

import numpy as np
import pandas as pd
from lifelines.exceptions import ConvergenceWarning as LifelinesConvergence
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.feature_selection import VarianceThreshold
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from radfusion.training.cv.arrays import Outcome
from radfusion.training.tasks import concordance

INNER_FOLDS = 5
SURVIVAL = ("coxnet", "cox_ridge", "rsf")
CLASSIFICATION = ("logistic", "gradient_boosting")
RIDGE_PENALIZERS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
FOREST_TREES = 300


class Baseline(Protocol):
    name: str

    def fit(self, x: np.ndarray, outcome: Outcome) -> Baseline: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def default_baselines(survival: bool) -> tuple[str, ...]:
    return SURVIVAL if survival else CLASSIFICATION


def make_baseline(name: str, n_classes: int = 2, seed: int = 0, trees: int = FOREST_TREES) -> Baseline:
    """The baseline ``name``; ``trees``: the random survival forest's size."""
    models = {
        "coxnet": lambda: Coxnet(seed),
        "cox_ridge": lambda: RidgeCox(seed),
        "rsf": lambda: SurvivalForest(seed, trees),
        "logistic": lambda: ElasticNetLogistic(n_classes, seed),
        "gradient_boosting": lambda: GradientBoosting(n_classes, seed),
    }
    if name not in models:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(models)}")
    return models[name]()


def _surv(outcome: Outcome) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=outcome.event.astype(bool), time=outcome.time)


def _quiet_search(search: GridSearchCV, x: np.ndarray, y) -> GridSearchCV:
    # Weak penalties over-fit a small training part until the solver stops early or
    # fails (scored as chance by error_score), and lifelines warns of near-separation
    # at every fit: expected in a penalty search, not news.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", LifelinesConvergence)
        return search.fit(x, y)


class Coxnet:
    name = "coxnet"

    def __init__(self, seed: int = 0, l1_ratio: float = 0.5, n_alphas: int = 50):
        self.seed, self.l1_ratio, self.n_alphas = seed, l1_ratio, n_alphas

    def _pipeline(self, **coxnet) -> Pipeline:
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        return make_pipeline(
            VarianceThreshold(), StandardScaler(), CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, **coxnet)
        )

    def fit(self, x: np.ndarray, outcome: Outcome) -> Coxnet:
        # glmnet's way: each inner fold fits the whole penalty path once (warm starts
        # along it) and is scored at every penalty, instead of one fit per penalty and
        # fold (50x5 cold fits, minutes per outer fold).
        y = _surv(outcome)
        alphas = self._pipeline(n_alphas=self.n_alphas, alpha_min_ratio=0.01).fit(x, y)[-1].alphas_
        scores = np.zeros(len(alphas))
        for train, test in KFold(INNER_FOLDS, shuffle=True, random_state=self.seed).split(x):
            scores += self._path_scores(x[train], y[train], x[test], outcome.take(test), alphas)
        best = int(np.argmax(scores))
        self.chosen = {"alpha": float(alphas[best])}
        self.model = self._pipeline(alphas=alphas).fit(x, y)
        return self

    def _path_scores(self, x, y, x_test, test: Outcome, alphas: np.ndarray) -> np.ndarray:
        """Held-out c-index at each penalty; chance where the path could not be fitted."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                path = self._pipeline(alphas=alphas).fit(x, y)
        except ArithmeticError:  # weights diverged at the weakest penalties
            return np.full(len(alphas), 0.5)
        return np.array([concordance(path.predict(x_test, alpha=a), test.time, test.event) for a in alphas])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x, alpha=self.chosen["alpha"]), dtype=np.float64)


class _LifelinesCox(BaseEstimator):
    """lifelines' CoxPHFitter as a scikit-learn estimator (fit on a survival array,
    predict the log partial hazard, score by Harrell's C), so scikit-learn's grid
    search chooses its penalizer on the same inner folds as Coxnet's."""

    def __init__(self, penalizer: float = 0.1):
        self.penalizer = penalizer

    @staticmethod
    def _frame(x: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])

    def fit(self, x: np.ndarray, y: np.ndarray) -> _LifelinesCox:
        from lifelines import CoxPHFitter

        names = y.dtype.names
        frame = self._frame(x).assign(_time=y[names[1]], _event=y[names[0]].astype(int))
        self.fitter_ = CoxPHFitter(penalizer=self.penalizer, l1_ratio=0.0).fit(frame, "_time", "_event")
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.fitter_.predict_log_partial_hazard(self._frame(x)).to_numpy(dtype=np.float64)

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        names = y.dtype.names
        return concordance(self.predict(x), y[names[1]], y[names[0]].astype(int))


class RidgeCox:
    name = "cox_ridge"

    def __init__(self, seed: int = 0, penalizers: tuple[float, ...] = RIDGE_PENALIZERS):
        self.seed, self.penalizers = seed, penalizers

    def fit(self, x: np.ndarray, outcome: Outcome) -> RidgeCox:
        # lifelines standardises the columns itself; a column constant in an inner
        # training part would divide by zero, hence the threshold inside the pipeline.
        search = GridSearchCV(
            make_pipeline(VarianceThreshold(), _LifelinesCox()),
            {"_lifelinescox__penalizer": list(self.penalizers)},
            cv=KFold(INNER_FOLDS, shuffle=True, random_state=self.seed),
            error_score=0.5,
        )
        self.model = _quiet_search(search, x, _surv(outcome)).best_estimator_
        self.chosen = {"penalizer": float(search.best_params_["_lifelinescox__penalizer"])}
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x)


class SurvivalForest:
    name = "rsf"

    def __init__(self, seed: int = 0, trees: int = FOREST_TREES):
        self.seed, self.trees = seed, trees
        self.chosen: dict = {}

    def fit(self, x: np.ndarray, outcome: Outcome) -> SurvivalForest:
        from sksurv.ensemble import RandomSurvivalForest

        self.model = RandomSurvivalForest(
            n_estimators=self.trees,
            min_samples_split=10,
            min_samples_leaf=15,
            max_features="sqrt",
            n_jobs=1,
            random_state=self.seed,
            low_memory=True,
        ).fit(x, _surv(outcome))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x), dtype=np.float64)


def _all_classes(model, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities in class-index order, zero for a class the training part lacked."""
    full = np.zeros((len(probs), n_classes))
    full[:, np.asarray(model.classes_, dtype=int)] = probs
    return full


class ElasticNetLogistic:
    name = "logistic"

    def __init__(self, n_classes: int = 2, seed: int = 0):
        self.n_classes, self.seed = n_classes, seed

    def fit(self, x: np.ndarray, outcome: Outcome) -> ElasticNetLogistic:
        search = LogisticRegressionCV(
            Cs=10,
            l1_ratios=(0.5,),
            solver="saga",
            cv=StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=self.seed),
            scoring="roc_auc" if self.n_classes == 2 else "roc_auc_ovr",
            # saga's default tolerance (1e-4) took 10x longer on a near-separable table
            # (scikit-learn's breast cancer: 8.5 s against 0.9 s) for the same ranking.
            tol=1e-3,
            max_iter=1000,
            random_state=self.seed,
            use_legacy_attributes=False,
        )
        self.model = make_pipeline(VarianceThreshold(), StandardScaler(), search)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(x, outcome.label.astype(int))
        self.chosen = {"C": float(np.ravel(search.C_)[0])}
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _all_classes(self.model, self.model.predict_proba(x), self.n_classes)


class GradientBoosting:
    name = "gradient_boosting"

    def __init__(self, n_classes: int = 2, seed: int = 0):
        self.n_classes, self.seed = n_classes, seed
        self.chosen: dict = {}

    def fit(self, x: np.ndarray, outcome: Outcome) -> GradientBoosting:
        self.model = HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_depth=3,
            min_samples_leaf=10,
            l2_regularization=1.0,
            random_state=self.seed,
        )
        # One OpenMP thread: on a few hundred rows the threads mostly wait for each
        # other, and worse on a busy machine (wine, 3 classes: 8.4 s on 2 threads
        # under load against 0.2 s on one). Folds run in parallel processes anyway.
        with threadpool_limits(1, user_api="openmp"):
            self.model.fit(x, outcome.label.astype(int))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        with threadpool_limits(1, user_api="openmp"):
            return _all_classes(self.model, self.model.predict_proba(x), self.n_classes)
