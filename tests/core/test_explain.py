"""radfusion.explain on a real ONNX model whose answer depends on known genes and a
known image region: a small torch module with set weights, exported by
radfusion.training.export exactly as a trained model is. Explain must find those genes with
their exact attributions (the model is linear in them) and put the saliency peak on
the bright region's patient coordinates, read from DICOM files written with a
non-axial-canonical orientation so the grid-to-patient mapping is really exercised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radfusion.contract import ImageGeometry, ModelContract
from radfusion.dicom.volume import Volume
from radfusion.explain import (
    BONE_LEVEL,
    ExplainSettings,
    enhanced_image,
    explain_case,
    occlusion_grid,
)
from radfusion.predictor import Predictor, prepare_case
from radfusion.preprocess import (
    ModelInputs,
    build_inputs,
    grid_to_patient,
    preprocess_image,
)
from tests.support.dicom_series import (
    AXIAL_REVERSED,
    SAGITTAL,
    write_series,
)
from tests.support.known_signal import (
    GENE_WEIGHTS,
    GEOMETRY,
    TEMPERATURE,
    export_known_signal,
    known_signal_contract,
    lesion_centre_mm,
    lesion_volume,
    raw_genes,
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_known_signal(tmp_path_factory.mktemp("known") / "model.onnx", known_signal_contract(), GENE_WEIGHTS)


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Predictor:
    return Predictor.load(model_path, device="cpu")


# ------------------------------------------------------------------ pure geometry


@pytest.mark.parametrize("shape", [(8, 16, 16), (32, 48, 48), (1, 64, 64), (5, 7, 3)])
@pytest.mark.parametrize("max_windows", [1, 27, 400])
def test_occlusion_grid_covers_the_grid_within_the_cap(shape, max_windows) -> None:
    grid = occlusion_grid(shape, max_windows)
    assert 1 <= len(grid.starts) <= max_windows
    covered = np.zeros(shape, dtype=int)
    for start in grid.starts:
        covered[tuple(slice(s, s + w) for s, w in zip(start, grid.window, strict=True))] += 1
    assert covered.min() >= 1  # every voxel can be occluded
    assert all(w <= n for w, n in zip(grid.window, shape, strict=True))
    # Finest such grid: one more step per axis would exceed the cap (or the grid).
    if grid.stride != (1,) * 3:
        finer = occlusion_grid(shape, 10**9)
        assert len(finer.starts) > max_windows or finer.window == grid.window


def test_occlusion_grid_of_the_demo_geometry() -> None:
    grid = occlusion_grid((32, 48, 48), 400)
    assert (grid.window, grid.stride, len(grid.starts)) == ((8, 12, 12), (4, 6, 6), 343)


@pytest.mark.parametrize(
    "direction",
    [np.eye(3)[:, [2, 1, 0]], np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])],
    ids=["axial", "axial-flipped-rows-and-slices"],
)
def test_grid_to_patient_inverts_the_preprocessing(direction) -> None:
    """Voxels holding their own patient coordinate: after preprocess_image (resample,
    crop in-plane, pad along slices), each grid voxel must hold the coordinate that
    grid_to_patient assigns to it (linear interpolation keeps linear functions)."""
    shape, spacing, origin = (6, 40, 30), (7.0, 5.0, 6.0), np.array([-30.0, 12.0, -80.0])
    geometry = ImageGeometry(target_shape=(10, 16, 16), target_spacing=(4.0, 8.0, 9.0), window=(-1000.0, 1000.0))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    position = origin + (index * spacing) @ direction.T
    for axis in range(3):
        volume = Volume(position[..., axis].astype(np.float32), spacing, tuple(origin), direction, "CT", [])
        grid = preprocess_image(volume, geometry)[0] * 2000.0 - 1000.0
        affine = grid_to_patient(volume, geometry)
        inverse = np.linalg.inv(volume.affine)
        checked = 0
        for g in np.ndindex(grid.shape):
            patient = affine @ np.array([*g, 1.0])
            source = (inverse @ patient)[:3]
            if np.all(source >= 0) and np.all(source <= np.array(shape) - 1):
                assert grid[g] == pytest.approx(patient[axis], abs=1e-2), (axis, g)
                checked += 1
        assert checked > 0.4 * grid.size  # the grid mostly overlaps the volume


# ------------------------------------------------------------------ genes


def test_gene_attributions_are_exact_for_a_linear_model(predictor: Predictor) -> None:
    genes = raw_genes()
    case = prepare_case(predictor.contract, None, genes)
    result = predictor.explain(case, ExplainSettings(top_genes=5))
    panel = predictor.contract.genomics
    z = {f: (genes[f] - m) / s for f, m, s in zip(panel.features, panel.mean, panel.std, strict=True)}
    expected = {f: w * z[f] / TEMPERATURE for f, w in GENE_WEIGHTS.items()}
    top = result["genes"]["top"]
    assert result["target_label"] == "responder"
    assert [g["feature"] for g in top[:3]] == sorted(expected, key=lambda f: -abs(expected[f]))
    for entry in top[:3]:
        assert entry["attribution"] == pytest.approx(expected[entry["feature"]], abs=1e-4)
        assert entry["value_z"] == pytest.approx(z[entry["feature"]], abs=1e-5)
        assert entry["block"] == ("mutation" if entry["feature"].endswith("_mut") else "expression")
    assert all(abs(g["attribution"]) < 1e-5 for g in top[3:])  # no weight, no attribution
    assert result["genes"]["features_evaluated"] == len(panel.features)
    baseline = sum(w * z[f] for f, w in GENE_WEIGHTS.items()) / TEMPERATURE
    assert result["baseline_score"] == pytest.approx(baseline, abs=1e-4)
    assert result["saliency"] == {"available": False, "reason": "no image in this case"}


def test_feature_cap_keeps_the_features_furthest_from_the_mean(predictor: Predictor) -> None:
    genes = raw_genes(seed=3)
    case = prepare_case(predictor.contract, None, genes)
    calls: list[int] = []

    def counted(*batch):
        calls.append(len(batch[0]))
        return predictor.model.logits(*batch)

    settings = ExplainSettings(top_genes=12, max_features=4, batch_size=3)
    result = explain_case(counted, predictor.contract, case.inputs, settings)
    z = np.abs(case.inputs.genomics)
    names = predictor.contract.genomics.features
    assert {g["feature"] for g in result["genes"]["top"]} == {names[i] for i in np.argsort(-z)[:4]}
    assert result["genes"]["features_evaluated"] == 4
    assert sum(calls) == result["model_rows"] == 1 + 4  # no image: no windows
    assert max(calls) <= 3


# ------------------------------------------------------------------ image


@pytest.mark.parametrize("orientation", [AXIAL_REVERSED, SAGITTAL], ids=["axial-reversed", "sagittal"])
def test_saliency_peak_lies_on_the_bright_region_in_patient_coordinates(
    predictor: Predictor, tmp_path: Path, orientation
) -> None:
    paths, _ = write_series(tmp_path, lesion_volume(), orientation)
    case = prepare_case(predictor.contract, paths, raw_genes())
    calls: list[int] = []

    def counted(*batch):
        calls.append(len(batch[0]))
        return predictor.model.logits(*batch)

    settings = ExplainSettings(max_windows=400, batch_size=64)
    result = explain_case(counted, predictor.contract, case.inputs, settings, case.study.grid_affine)
    saliency = result["saliency"]
    assert saliency["available"] and saliency["coordinates"].startswith("DICOM patient")
    assert saliency["windows"] == 343 and saliency["window_voxels"] == [2, 4, 4]
    # Within one model-grid voxel of the box centre on every axis (x, y, z).
    error = np.abs(np.array(saliency["peak_mm"]) - lesion_centre_mm())
    assert np.all(error <= np.array(GEOMETRY.target_spacing)[::-1]), (saliency["peak_mm"], lesion_centre_mm())
    assert saliency["peak_effect"] > 0  # enhancing the bright box raises the response
    # Bounded cost: the case, each feature, each window, each window of the second pass;
    # in batches of at most 64.
    assert 0 < saliency["refine_windows"] <= settings.refine_windows
    assert sum(calls) == result["model_rows"] == 1 + 12 + 343 + saliency["refine_windows"] <= settings.max_rows
    assert max(calls) <= 64
    assert result["genes"]["available"]


def test_image_without_genomics_explains_the_image_and_says_why_no_genes(predictor: Predictor, tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, lesion_volume(), AXIAL_REVERSED)
    case = predictor.prepare(paths, None)
    result = predictor.explain(case, ExplainSettings(max_windows=64))
    assert result["genes"] == {"available": False, "reason": "no genomics in this case"}
    assert result["saliency"]["available"] and result["saliency"]["windows"] <= 64
    error = np.abs(np.array(result["saliency"]["peak_mm"]) - lesion_centre_mm())
    # Coarser windows (64 at most), so a coarser but still local answer: within 2 voxels.
    assert np.all(error <= 2 * np.array(GEOMETRY.target_spacing)[::-1])


def test_enhancement_raises_only_what_is_brighter_than_soft_tissue() -> None:
    image = np.full((1, 4, 8, 8), 0.5, dtype=np.float32)  # soft tissue
    image[0, 0] = 0.1  # air and fat below the body threshold
    image[0, 1, :2] = 0.6  # a faint finding, 0.1 above tissue
    image[0, 2, :2] = 1.0  # bone
    image[0, 3, :2] = 0.9  # a bright finding
    out = enhanced_image(image, gain=3.0)
    assert out.dtype == image.dtype and np.array_equal(out[0, 0], image[0, 0])
    assert np.allclose(out[0, 1, :2], 0.8) and np.allclose(out[0, 1, 2:], 0.5)
    assert np.array_equal(out[0, 2], image[0, 2])
    assert np.all((out[0, 3, :2] < BONE_LEVEL) & (out[0, 3, :2] > BONE_LEVEL - 0.01))


FAINT = (slice(4, 7), slice(3, 6), slice(10, 13))  # on the (8, 16, 16) model grid


def _faint_lesion_case(contract: ModelContract) -> ModelInputs:
    rng = np.random.default_rng(0)
    image = (0.45 + 0.05 * rng.random((1, *GEOMETRY.target_shape))).astype(np.float32)
    image[(0, *FAINT)] = 0.6
    return build_inputs(contract, image, None)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["raises", "lowers"])
def test_saliency_finds_a_lesion_the_model_reads_only_when_conspicuous(sign: float) -> None:
    """A model like a network whose units fire only above a threshold (0.7): removing
    the faint lesion (0.6) would change nothing, raising its contrast does, so the peak
    lies on it, whether brightness raises the score or (``lowers``) lowers it."""
    contract = known_signal_contract(temperature=1.0)
    inputs = _faint_lesion_case(contract)

    def logits(image, genomics, clinical, presence):
        score = sign * np.maximum(image - 0.7, 0.0).sum(axis=(1, 2, 3, 4))
        return np.stack([np.zeros_like(score), score], axis=1)

    saliency = explain_case(logits, contract, inputs, ExplainSettings(max_features=1))["saliency"]
    centre = [(s.start + s.stop - 1) / 2 for s in FAINT]
    assert np.all(np.abs(np.array(saliency["peak_voxel"]) - centre) <= 1.0), (saliency["peak_voxel"], centre)
    assert np.sign(saliency["peak_effect"]) == sign


@pytest.mark.parametrize("corner", [(1, 2, 13), (3, 9, 5), (5, 6, 1), (0, 13, 7), (6, 1, 10)])
def test_second_pass_locates_a_small_lesion_finer_than_the_windows(corner: tuple[int, int, int]) -> None:
    """A 2 x 2 x 2 lesion, smaller than the first pass's 4 x 8 x 8 windows: those say
    which windows hold it (up to 2 voxels off where it sits off their centres), the
    second pass's half-size windows where in them it lies."""
    contract = known_signal_contract(temperature=1.0)
    rng = np.random.default_rng(1)
    image = (0.45 + 0.05 * rng.random((1, *GEOMETRY.target_shape))).astype(np.float32)
    image[(0, *(slice(c, c + 2) for c in corner))] = 0.6
    inputs = build_inputs(contract, image, None)

    def logits(image, genomics, clinical, presence):
        score = np.maximum(image - 0.7, 0.0).sum(axis=(1, 2, 3, 4))
        return np.stack([np.zeros_like(score), score], axis=1)

    errors = {}
    for refine in (0, ExplainSettings.refine_windows):
        settings = ExplainSettings(max_features=1, max_windows=64, refine_windows=refine)
        result = explain_case(logits, contract, inputs, settings)
        saliency = result["saliency"]
        assert result["model_rows"] == 1 + saliency["windows"] + saliency.get("refine_windows", 0) <= settings.max_rows
        errors[refine] = np.abs(np.array(saliency["peak_voxel"]) - (np.array(corner) + 0.5))
    assert np.all(errors[ExplainSettings.refine_windows] <= 0.5), errors
    assert errors[ExplainSettings.refine_windows].sum() <= errors[0].sum(), errors


@pytest.mark.parametrize("shape", [(8, 16, 16), (32, 48, 48), (1, 64, 64), (5, 7, 3)])
@pytest.mark.parametrize("budget", [27, 64, 125])
def test_second_pass_windows_are_half_size_inside_the_grid_and_within_budget(shape, budget: int) -> None:
    from radfusion.explain import occlusion_grid, refine_grid

    grid = occlusion_grid(shape, 400)
    for strongest in (0, len(grid.starts) // 2, len(grid.starts) - 1):
        effects = np.zeros(len(grid.starts))
        effects[strongest] = 1.0
        fine = refine_grid(grid, effects, shape, budget)
        assert 1 <= len(fine.starts) <= budget
        assert fine.window == tuple(max(w // 2, 1) for w in grid.window)
        starts = np.array(fine.starts)
        assert np.all(starts >= 0) and np.all(starts + fine.window <= shape)
        # Every fine window overlaps the strongest first-pass window or lies beside it.
        best = np.array(grid.starts[strongest])
        assert np.all(starts + fine.window > best - grid.window) and np.all(starts < best + 2 * np.array(grid.window))


def test_second_pass_that_finds_no_rise_keeps_the_first_pass_peak() -> None:
    """A model that reads a lesion only whole: half of it, enhanced, changes nothing (or
    lowers the score). The first pass's peak stands, not the corner of the second pass."""
    from radfusion.explain import ImageOcclusion, peak_voxel

    image = np.full((1, 32, 48, 48), 0.5, dtype=np.float32)
    plan = ImageOcclusion(image, 400, refine_windows=125)
    effects = np.zeros(len(plan))
    effects[len(plan) // 2] = 1.0
    fine = plan.refined(effects)
    assert fine is not None
    first = peak_voxel(plan.grid, effects)
    for fine_effects in (np.zeros(len(fine.starts)), np.full(len(fine.starts), -0.5)):
        assert np.array_equal(plan.peak(effects, fine, fine_effects), first)
    rising = np.zeros(len(fine.starts))
    rising[0] = 1.0
    assert not np.array_equal(plan.peak(effects, fine, rising), first)


@pytest.mark.parametrize("refine", [1, 8, 26, -1])
def test_a_second_pass_too_small_to_tile_the_window_is_refused(refine: int) -> None:
    from radfusion.explain import ImageOcclusion

    with pytest.raises(ValueError, match="refine_windows"):
        ExplainSettings(refine_windows=refine)
    with pytest.raises(ValueError, match="refine_windows"):
        ImageOcclusion(np.zeros((1, 8, 16, 16), np.float32), 64, refine_windows=refine)


# ------------------------------------------------------------------ the real fusion network


def test_explains_the_exported_fusion_network(tiny_onnx_model: Path, tiny_cohort: Path) -> None:
    """On the (untrained) FusionNet of conftest: every reported attribution is the score
    drop of occluding that feature, recomputed here by hand, and the peak lies inside
    the study's patient-space bounding box."""
    from radfusion.dicom import find_studies
    from radfusion.explain import log_odds
    from radfusion.genomics import load_genomics_table, row_as_mapping

    predictor = Predictor.load(tiny_onnx_model, device="cpu")
    table = load_genomics_table(tiny_cohort / "genomics.parquet")
    study = next(s for s in find_studies(tiny_cohort / "dicom").studies.values() if s.patient_id in table.index)
    paths = [h.path for h in study.instances]
    case = predictor.prepare(paths, row_as_mapping(table, study.patient_id))
    result = predictor.explain(case, ExplainSettings(top_genes=5, max_windows=100))

    contract, inputs = predictor.contract, case.inputs
    target = contract.labels.index(result["target_label"])
    features = contract.genomics.features
    occluded = np.repeat(inputs.genomics[np.newaxis], 5, axis=0)
    for row, entry in enumerate(result["genes"]["top"]):
        occluded[row, features.index(entry["feature"])] = 0.0
    batch = [np.repeat(x[np.newaxis], 5, axis=0) for x in (inputs.image, inputs.clinical, inputs.presence)]
    logits = predictor.model.logits(batch[0], occluded, batch[1], batch[2])
    drops = result["baseline_score"] - log_odds(logits, target, contract.temperature)
    assert [e["attribution"] for e in result["genes"]["top"]] == pytest.approx(drops.tolist(), abs=1e-4)
    assert abs(result["genes"]["top"][0]["attribution"]) > 0

    saliency = result["saliency"]
    assert saliency["windows"] <= 100
    assert result["model_rows"] == 1 + len(features) + saliency["windows"] + saliency["refine_windows"]
    last = np.array(contract.image.target_shape) - 1
    corners = [case.study.grid_affine @ np.array([*(last * np.array(c)), 1.0]) for c in np.ndindex(2, 2, 2)]
    low, high = np.min(corners, axis=0)[:3], np.max(corners, axis=0)[:3]
    peak = np.array(saliency["peak_mm"])
    assert np.all(peak >= low - 1e-6) and np.all(peak <= high + 1e-6), (peak, low, high)
