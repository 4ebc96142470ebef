"""Which patients train, validate and test: one split, or one fold of a stratified
K-fold cross-validation with an inner validation split (nested validation: the
checkpoint is chosen on patients the test fold never sees). Every assignment is
deterministic and independent of row order, so the deep model and the classical
baselines (radfusion.training.cv) are scored on the same folds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def split_patients(table: pd.DataFrame, fractions: Sequence[float], seed: int, target: str) -> pd.Series:
    """train/val/test by ``fractions``, stratified by ``target``."""
    rng = np.random.default_rng(seed)
    assignment = pd.Series(index=table.index, dtype=object)
    for _, group in table.groupby(target):
        ids = np.array(sorted(group.index))
        rng.shuffle(ids)
        n_train = round(fractions[0] * len(ids))
        n_val = round(fractions[1] * len(ids))
        assignment[ids[:n_train]] = "train"
        assignment[ids[n_train : n_train + n_val]] = "val"
        assignment[ids[n_train + n_val :]] = "test"
    return assignment


def assign_folds(table: pd.DataFrame, folds: int, seed: int, target: str) -> pd.Series:
    """patient id -> fold index in [0, folds), stratified by ``target``: each class is
    shuffled and dealt round-robin, continuing from where the previous class stopped so
    fold sizes differ by at most one."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {folds}")
    rng = np.random.default_rng(seed)
    assignment = pd.Series(index=table.index, dtype=int)
    dealt = 0
    for _, group in table.groupby(target):
        ids = np.array(sorted(group.index))
        rng.shuffle(ids)
        assignment[ids] = (dealt + np.arange(len(ids))) % folds
        dealt += len(ids)
    return assignment


def fold_seed(split_seed: int, repeat: int) -> int:
    """The shuffle seed of one repeat of a repeated cross-validation."""
    return split_seed + 1000 * repeat


def cv_patients(table: pd.DataFrame, folds: int, fold: int, seed: int, target: str, val_share: float) -> pd.Series:
    """train/val/test for fold ``fold``: the fold is the test part; the rest is split
    into train and an inner validation part (``val_share`` of it), stratified."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not one of 0..{folds - 1}")
    in_fold = assign_folds(table, folds, seed, target) == fold
    assignment = pd.Series("test", index=table.index, dtype=object)
    rng = np.random.default_rng(seed + 1)
    for _, group in table[~in_fold].groupby(target):
        ids = np.array(sorted(group.index))
        rng.shuffle(ids)
        n_val = round(val_share * len(ids))
        assignment[ids[:n_val]] = "val"
        assignment[ids[n_val:]] = "train"
    return assignment
