"""The evidence building blocks on inputs whose answer is known: geometry inversion,
occlusion on a model that looks at one spot or sees only conspicuous lesions,
temperature scaling, ECE, the treatment margin rule, ranking agreement and the
subgroup table."""

from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest
import torch

from radfusion.preprocess import preprocess_image
from radfusion.training.evidence.attribution import rank_features, top_k_agreement
from radfusion.training.evidence.calibration import (
    TEMPERATURE_BOUNDS,
    ece,
    fit_label_temperatures,
    fit_temperature,
    positive_probability,
)
from radfusion.training.evidence.geometry import (
    ModelGrid,
    load_series_volume,
    to_source_grid,
)
from radfusion.training.evidence.saliency import (
    inside_ellipsoid,
    occlusion_map,
)
from radfusion.training.evidence.subgroups import subgroup_table
from radfusion.training.evidence.treatment import rank_treatments, treatment_columns


def _study_files(cohort, patient_id):
    from radfusion.cohort import index_studies

    studies = index_studies(cohort / "dicom").set_index("patient_id")
    return [cohort / "dicom" / f for f in studies.loc[patient_id, "files"]]


def test_model_grid_inverts_the_preprocessing(tiny_cohort, tiny_contract):
    truth = json.loads((tiny_cohort / "truth.json").read_text())
    patient = truth["patients"][0]
    geometry = tiny_contract.image
    volume = load_series_volume(_study_files(tiny_cohort, patient["patient_id"]), geometry)
    image = preprocess_image(volume, geometry)[0]
    grid = ModelGrid.for_volume(volume, geometry)

    points = np.array([[0.0, 0.0, 0.0], [3.5, 7.25, 1.0], [7.0, 15.0, 15.0]])
    assert np.allclose(grid.patient_to_model(grid.model_to_patient(points)), points)
    # The model image carried back onto the source voxels matches the source itself.
    low, high = geometry.window
    source = np.clip((volume.voxels - low) / (high - low), 0, 1)
    # Compare on source voxels well inside the model's field of view (one voxel in).
    index = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    model_index = grid.patient_to_model(index @ volume.affine[:3, :3].T + volume.affine[:3, 3])
    shape = np.asarray(geometry.target_shape)
    interior = np.all((model_index >= 1) & (model_index <= shape - 2), axis=1).reshape(volume.shape)
    assert interior.mean() > 0.3

    def agreement(g: ModelGrid) -> float:
        carried = to_source_grid(image, volume, g)
        return float(np.corrcoef(carried[interior], source[interior])[0, 1])

    best = agreement(grid)
    assert best > 0.6  # the model grid is 2x coarser: blurred, but aligned
    # Aligned means no in-plane shift does better (the phantom barely changes along z;
    # the exact test below covers every axis).
    for axis in (1, 2):
        for step in (-0.5, 0.5):
            offset = grid.offset.copy()
            offset[axis] += step
            assert agreement(ModelGrid(grid.canonical_affine, grid.scale, offset)) < best
    # The truth's lesion centre (patient mm) lands on the truth's lesion voxel.
    voxel = np.linalg.solve(volume.affine, [*patient["lesion_centre_mm"], 1.0])[:3]
    assert np.allclose(voxel, patient["lesion_centre_voxel"], atol=1e-3)


def test_model_grid_is_exact_on_a_linear_ramp():
    """Linear interpolation reproduces a linear ramp exactly, so the model image's value
    at every interior voxel must equal the ramp at the mapped source coordinate."""
    from radfusion.contract import ImageGeometry
    from radfusion.dicom import Volume

    k, r, c = np.meshgrid(np.arange(11), np.arange(30), np.arange(26), indexing="ij")
    ramp = (100.0 * k + 3.0 * r + 0.5 * c).astype(np.float32)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # (slice, row, col) -> z, y, x
    volume = Volume(ramp, (5.3, 6.1, 5.7), (-80.0, -90.0, -300.0), direction, "CT", [])
    geometry = ImageGeometry(target_shape=(9, 16, 24), target_spacing=(6.0, 12.0, 7.0), window=(0.0, 2000.0))
    image = preprocess_image(volume, geometry)[0] * 2000.0
    grid = ModelGrid.for_volume(volume, geometry)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    source = grid.model_to_canonical(index)
    interior = np.all((source >= 0) & (source <= np.asarray(ramp.shape) - 1), axis=1)
    expected = source[interior] @ np.array([100.0, 3.0, 0.5])
    assert interior.sum() > 500
    assert np.allclose(image.reshape(-1)[interior], expected, atol=0.05)


class _LooksAtOneSpot(torch.nn.Module):
    """Positive logit = mean intensity of a 2x3x3 spot: covering that spot is what matters."""

    def forward(self, image, genomics, clinical, presence):
        spot = image[:, 0, 5:7, 10:13, 4:7].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(spot), 10 * spot], dim=1)


def test_occlusion_finds_the_spot_the_model_uses():
    torch.manual_seed(0)
    image = 0.4 + 0.05 * torch.rand(1, 1, 12, 24, 24)
    image[:, :, 5:7, 10:13, 4:7] = 0.9  # a bright spot the model reads
    image[:, :, 1:3, 18:21, 18:21] = 0.9  # an equally bright one it ignores
    found = occlusion_map(_LooksAtOneSpot(), image, torch.zeros(1, 3), torch.zeros(1, 1), torch.ones(1, 2))
    saliency = found.voxel_map
    assert 4 <= found.peak[0] <= 7 and 9 <= found.peak[1] <= 13 and 3 <= found.peak[2] <= 7, found.peak
    assert saliency.max() > 0  # perturbing the spot moves the score toward the positive class
    assert saliency[1:3, 18:21, 18:21].max() < 0.5 * saliency.max()


class _SeesOnlyBrightFindings(torch.nn.Module):
    """Positive logit = bright mass above a threshold (0.7), like a network whose ReLU
    units fire only for conspicuous lesions: a faint lesion (0.6) moves it not at all."""

    def forward(self, image, genomics, clinical, presence):
        mass = torch.relu(image - 0.7).sum(dim=(1, 2, 3, 4))
        return torch.stack([torch.zeros_like(mass), mass], dim=1)


def test_enhancement_finds_a_lesion_too_faint_for_removal():
    """The evidence fixture's misses in miniature: removing a lesion the model does not
    respond to would change nothing; raising its contrast does, so the peak lies on it.
    Bone (read by the model) stays put."""
    torch.manual_seed(0)
    image = 0.45 + 0.05 * torch.rand(1, 1, 12, 24, 24)
    image[:, :, 7:10, 4:8, 14:18] = 0.6  # the faint lesion
    image[:, :, :, 20:23, 10:13] = 1.0  # bone: over the threshold, but anatomy
    found = occlusion_map(_SeesOnlyBrightFindings(), image, torch.zeros(1, 3), torch.zeros(1, 1), torch.ones(1, 2))
    enhanced = found.voxel_map
    assert 6.5 <= found.peak[0] <= 9.5 and 3.5 <= found.peak[1] <= 7.5 and 13.5 <= found.peak[2] <= 17.5, found.peak
    assert enhanced.max() > 1.0
    assert np.abs(enhanced[:, 21, 11]).max() < 0.5 * enhanced.max()  # the bone column itself


def test_torch_log_odds_is_the_core_definition():
    """Integrated Gradients needs a differentiable score: the torch form must be the
    core's radfusion.explain.log_odds (two and three labels, the last one positive)."""
    from radfusion.explain import log_odds
    from radfusion.training.evidence.cases import log_odds_torch, positive_log_odds

    for n in (2, 3):
        logits = torch.randn(7, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        assert np.allclose(log_odds_torch(logits).numpy(), log_odds(logits.numpy()), atol=1e-12)
        assert np.allclose(positive_log_odds(logits), log_odds(logits.numpy()), atol=1e-5)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 4000)
    label = (rng.random(4000) < 1 / (1 + np.exp(-z / 2.0))).astype(int)  # true temperature 2
    logits = np.stack([np.zeros_like(z), z], axis=1)
    t = fit_temperature(logits, label)
    assert abs(t - 2.0) < 0.2
    assert ece(positive_probability(logits, t), label) < ece(positive_probability(logits), label)
    with pytest.raises(ValueError):
        fit_temperature(logits[:5], np.ones(5, dtype=int))


@pytest.mark.parametrize("seed", [0, 1])
def test_each_label_gets_its_own_temperature_and_level(seed: int) -> None:
    """Label 0's logits are 3x too sharp, label 1's half as sharp and 1 too high: one
    temperature cannot fit both; one per label recovers each."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        z = rng.normal(0, 2, (n, 2))
        label = (rng.random((n, 2)) < 1 / (1 + np.exp(-z))).astype(int)
        return np.stack([3 * z[:, 0], 0.5 * z[:, 1] + 1.0], axis=1), label

    (train, train_y), (val, val_y) = draw(4000), draw(4000)
    temperatures, shifts = fit_label_temperatures(train, train_y, val, val_y)
    assert temperatures[0] == pytest.approx(3.0, rel=0.12) and temperatures[1] == pytest.approx(0.5, rel=0.12)
    # The level: (logit + shift) / T is the true logit, so the shift undoes the +1.
    assert shifts[0] == pytest.approx(0.0, abs=0.3) and shifts[1] == pytest.approx(-1.0, abs=0.15)


def test_a_label_with_one_validation_class_is_left_uncalibrated(caplog) -> None:
    rng = np.random.default_rng(0)
    logits, label = rng.normal(size=(200, 2)), (rng.random((200, 2)) < 0.5).astype(int)
    val_label = label.copy()
    val_label[:, 1] = 0
    with caplog.at_level("WARNING"):
        temperatures, shifts = fit_label_temperatures(logits, label, logits, val_label)
    assert temperatures[1] == 1.0 and shifts[1] == 0.0 and temperatures[0] != 1.0
    assert "label 1 has one class only" in caplog.text


def test_a_temperature_on_its_search_bound_is_announced(caplog):
    """Many separable validation cases drive the posterior's mode to T -> 0 despite the
    prior: the fitted value is the bound, not a fit, and the log says so; a fitted one
    says nothing. A few separable cases cannot outweigh the prior on log T."""
    z = np.linspace(-3, 3, 4000)
    separable = np.stack([np.zeros_like(z), z], axis=1)
    with caplog.at_level("WARNING", logger="radfusion.training.evidence.calibration"):
        t = fit_temperature(separable, (z > 0).astype(int))
    assert t == pytest.approx(TEMPERATURE_BOUNDS[0], rel=0.02)
    assert "at the search bound" in caplog.text
    caplog.clear()
    few = separable[::100]
    with caplog.at_level("WARNING", logger="radfusion.training.evidence.calibration"):
        t = fit_temperature(few, (few[:, 1] > 0).astype(int))
    assert 0.2 < t < 1.0 and "search bound" not in caplog.text
    rng = np.random.default_rng(0)
    noisy = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    with caplog.at_level("WARNING", logger="radfusion.training.evidence.calibration"):
        fit_temperature(separable, noisy)
    assert "search bound" not in caplog.text


def test_ece_by_hand():
    # Two bins used: 0.15 (n=2, observed 0.5) and 0.85 (n=2, observed 1.0).
    p = np.array([0.15, 0.15, 0.85, 0.85])
    y = np.array([0, 1, 1, 1])
    assert ece(p, y) == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)


def test_treatment_switches_only_beyond_the_margin():
    table = pd.DataFrame({"chemo": [0.0, 0.0, 1.0], "targeted": [0.3, 0.7, -1.0]}, index=["a", "b", "c"])
    ranked = rank_treatments(table, margin=0.5)
    assert ranked["recommended"].tolist() == ["chemo", "targeted", "chemo"]
    assert ranked.loc["a", "ranking"] == "targeted > chemo"  # ranked first, still not switched
    assert ranked.loc["b", "p_targeted"] == pytest.approx(1 / (1 + np.exp(-0.7)))
    assert rank_treatments(table, margin=0.2)["recommended"].tolist() == ["targeted", "targeted", "chemo"]
    assert rank_treatments(table, reference="targeted", margin=0.5)["recommended"].tolist() == [
        "targeted",
        "targeted",
        "chemo",
    ]
    with pytest.raises(ValueError):
        rank_treatments(table, reference="surgery")
    with pytest.raises(ValueError):
        treatment_columns(None)


def test_ranking_agreement_numbers():
    a = pd.Series(np.arange(30, 0, -1), index=[f"g{i}" for i in range(30)], dtype=float)
    assert top_k_agreement([a, a], k=10)["jaccard_mean"] == 1.0
    b = pd.Series(np.arange(1, 31), index=a.index, dtype=float)  # reversed
    result = top_k_agreement([a, b], k=10)
    assert result["jaccard_mean"] == 0.0 and result["spearman_mean"] == pytest.approx(-1.0)
    ranking = rank_features(pd.DataFrame({"x": [1.0, -1.0], "y": [0.1, 0.3]}))
    assert ranking.index.tolist() == ["x", "y"] and ranking.loc["x", "direction"] == 0.0


def test_inside_ellipsoid_uses_zyx_semi_axes():
    assert inside_ellipsoid((0, 0, 9), (0, 0, 0), (10, 2, 2))  # 9 mm along z within a 10 mm z semi-axis
    assert not inside_ellipsoid((9, 0, 0), (0, 0, 0), (10, 2, 2))  # but not along x


def test_subgroup_table_counts_and_intervals():
    rng = np.random.default_rng(1)
    n = 200
    clinical = pd.DataFrame(
        {"sex": rng.choice(["F", "M"], n), "age": rng.integers(40, 85, n), "site": rng.choice(["site_A", "site_B"], n)}
    )
    p = rng.random(n)
    y = (rng.random(n) < p).astype(int)
    table = subgroup_table(p, y, clinical, n_boot=50)
    assert set(table["variable"]) == {"sex", "age band", "site"}
    assert (table.groupby("variable")["n"].sum() == n).all()
    ok = table.dropna()
    assert ((ok["auroc_low"] <= ok["auroc"]) & (ok["auroc"] <= ok["auroc_high"])).all()


def test_no_test_patients_no_conformal_sets(caplog) -> None:
    from radfusion.training.evidence.conformal import fit_conformal

    with caplog.at_level("WARNING"):
        dm = types.SimpleNamespace(records={"train": [{}], "val": [{}], "test": []})
        assert fit_conformal(None, dm, 1.0, 0.9) is None
    assert "without conformal prediction sets" in caplog.text


def test_cross_fitted_coverage_measures_each_half_with_the_others_thresholds() -> None:
    """Sets calibrated on one half of a calibrated model's cases cover the other half's
    true labels at about the nominal rate (1000 cases: within 0.03)."""
    from radfusion.training.evidence.conformal import cross_fitted_coverage

    rng = np.random.default_rng(1)
    p1 = rng.uniform(0.02, 0.98, 1000)
    labels = (rng.random(1000) < p1).astype(int)
    report = cross_fitted_coverage(np.stack([1 - p1, p1], axis=1), labels, 0.9)
    assert report["cases"] == 1000 and abs(report["coverage"] - 0.9) < 0.03
    assert all(abs(c - 0.9) < 0.04 for c in report["coverage_by_label"])
