"""The one preprocessing definition: image resampling/cropping/windowing, gene panel
alignment and z-scoring, and the presence mask for missing modalities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from radfusion.contract import (
    ClinicalSpec,
    GenePanel,
    ImageGeometry,
    ModelContract,
    OmicsBlock,
)
from radfusion.dicom.volume import Volume
from radfusion.errors import (
    ClinicalInputError,
    GenePanelError,
    GeometryError,
    InvalidValueError,
    NoModalityError,
    WrongModalityError,
)
from radfusion.preprocess import (
    BlockFill,
    ClinicalInput,
    OmicsInput,
    build_inputs,
    fit_clinical_spec,
    fit_gene_panel,
    preprocess_clinical,
    preprocess_genomics,
    preprocess_image,
    preprocess_omics,
)

# (slice, row, col) axes of an axial volume point along patient z, y, x
AXIAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def volume(voxels: np.ndarray, spacing=(4.0, 4.0, 4.0), direction=AXIAL_DIRECTION, modality="CT") -> Volume:
    return Volume(
        np.asarray(voxels, dtype=np.float32),
        tuple(spacing),
        (0.0, 0.0, 0.0),
        np.array(direction, dtype=float),
        modality,
        [],
    )


def geometry(shape=(8, 8, 8), spacing=(4.0, 4.0, 4.0), window=(0.0, 100.0), modalities=("CT",)) -> ImageGeometry:
    return ImageGeometry(
        spatial_dims=3, target_shape=shape, target_spacing=spacing, window=window, modalities=modalities, min_slices=1
    )


def _extent(mask: np.ndarray, axis: int) -> list[int]:
    """Indices along ``axis`` where the mask has any voxel set."""
    other = tuple(a for a in range(3) if a != axis)
    return np.flatnonzero(mask.any(axis=other)).tolist()


# ------------------------------------------------------------------ image


def test_same_spacing_and_shape_is_only_the_window() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-50, 150, (8, 8, 8)).astype(np.float32)
    out = preprocess_image(volume(hu), geometry())
    assert out.shape == (1, 8, 8, 8) and out.dtype == np.float32
    assert np.allclose(out[0], np.clip(hu, 0, 100) / 100, atol=1e-6)


def test_twice_the_target_spacing_doubles_the_extent() -> None:
    hu = np.zeros((8, 8, 8), np.float32)
    hu[2:6, 3:5, 1:7] = 100.0  # a 4 x 2 x 6 voxel box at 4 mm
    out = preprocess_image(volume(hu), geometry(shape=(16, 16, 16), spacing=(2.0, 2.0, 2.0)))[0]
    box = out > 0.5
    # at 2 mm the box spans 8 x 4 x 12 voxels, still centred
    assert _extent(box, 0) == list(range(4, 12))
    assert _extent(box, 1) == list(range(6, 10))
    assert _extent(box, 2) == list(range(2, 14))
    # linear interpolation conserves the box's volume in mm^3 (8 times the voxels)
    assert out.sum() == pytest.approx(8 * (hu / 100).sum(), rel=1e-5)
    # anisotropic spacing: only the slice axis is resampled
    out = preprocess_image(volume(hu, spacing=(4.0, 2.0, 2.0)), geometry(shape=(16, 8, 8), spacing=(2.0, 2.0, 2.0)))[0]
    assert _extent(out > 0.5, 0) == list(range(4, 12))
    assert _extent(out > 0.5, 1) == [3, 4] and _extent(out > 0.5, 2) == list(range(1, 7))


def test_half_the_target_spacing_halves_the_extent() -> None:
    hu = np.zeros((16, 16, 16), np.float32)
    hu[4:12, 6:10, 2:14] = 100.0
    out = preprocess_image(volume(hu, spacing=(2.0, 2.0, 2.0)), geometry())[0]
    box = out > 0.5
    assert _extent(box, 0) == list(range(2, 6))
    assert _extent(box, 1) == [3, 4]
    assert _extent(box, 2) == list(range(1, 7))


def test_larger_volumes_are_centre_cropped_and_smaller_padded_with_the_window_low() -> None:
    hu = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8) % 90 + 5  # all inside (0, 100)
    out = preprocess_image(volume(hu), geometry(shape=(6, 10, 7)))[0]
    assert out.shape == (6, 10, 7)
    # slices 8 -> 6: crop starts at 1; rows 8 -> 10: pad 1 before, 1 after; cols 8 -> 7: crop starts at 0
    assert np.allclose(out[:, 1:9, :], hu[1:7, :, 0:7] / 100, atol=1e-6)
    assert np.all(out[:, 0, :] == 0) and np.all(out[:, 9, :] == 0)
    # odd padding puts the extra row after the data
    out = preprocess_image(volume(hu), geometry(shape=(8, 11, 8)))[0]
    assert np.all(out[:, 0] == 0) and np.all(out[:, 9:] == 0) and np.allclose(out[:, 1:9], hu / 100, atol=1e-6)
    # the pad is the window's low end, so it reads as air/background (0) after windowing
    out = preprocess_image(volume(hu + 1000), geometry(shape=(8, 10, 8), window=(-1000.0, 2000.0)))[0]
    assert np.all(out[:, 0] == 0.0) and out[:, 1:9].min() > 0.6


def test_window_maps_low_to_0_high_to_1_and_clips() -> None:
    hu = np.zeros((8, 8, 8), np.float32)
    hu[0, 0, :5] = [-1000.0, -150.0, 50.0, 250.0, 3000.0]
    out = preprocess_image(volume(hu), geometry(window=(-150.0, 250.0)))[0]
    assert out[0, 0, :5].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[1, 1, 1] == pytest.approx(150 / 400)  # 0 HU


def test_preprocessing_is_deterministic_to_the_byte() -> None:
    rng = np.random.default_rng(1)
    hu = rng.normal(40, 200, (11, 13, 9)).astype(np.float32)
    vol = volume(hu, spacing=(5.0, 3.3, 2.7))
    geom = geometry(shape=(9, 12, 10), spacing=(4.0, 3.0, 3.0), window=(-150.0, 250.0))
    a = preprocess_image(vol, geom)
    b = preprocess_image(volume(hu.copy(), spacing=(5.0, 3.3, 2.7)), geom)
    assert a.tobytes() == b.tobytes()
    assert np.array_equal(hu, vol.voxels)  # the input is not modified


def test_reversed_axes_are_made_canonical_before_resampling() -> None:
    hu = np.zeros((8, 8, 8), np.float32)
    hu[0] = 100.0  # the lowest slice in z once canonical
    flipped = volume(hu[::-1].copy(), direction=AXIAL_DIRECTION * np.array([-1.0, 1.0, 1.0]))
    out_flipped = preprocess_image(flipped, geometry())[0]
    out_plain = preprocess_image(volume(hu), geometry())[0]
    assert np.array_equal(out_flipped, out_plain)
    assert np.all(out_plain[0] == 1.0) and np.all(out_plain[1:] == 0.0)


def test_single_slice_keeps_its_slice_axis() -> None:
    hu = np.full((1, 8, 8), 50.0, np.float32)
    out = preprocess_image(volume(hu), geometry(shape=(3, 8, 8)))[0]
    assert np.all(out[1] == 0.5) and np.all(out[[0, 2]] == 0.0)


def test_wrong_modality_and_bad_spacing_are_rejected() -> None:
    with pytest.raises(WrongModalityError, match="modality MR not accepted; model accepts \\['CT'\\]"):
        preprocess_image(volume(np.zeros((8, 8, 8)), modality="MR"), geometry())
    with pytest.raises(GeometryError, match="invalid voxel spacing"):
        preprocess_image(volume(np.zeros((8, 8, 8)), spacing=(0.0, 4.0, 4.0)), geometry())


# ------------------------------------------------------------------ genomics


PANEL = GenePanel(features=["TP53", "EGFR", "KRAS"], mean=[5.0, 2.0, -1.0], std=[2.0, 0.5, 4.0])


def test_genes_align_to_panel_order_whatever_the_input_order() -> None:
    a = preprocess_genomics({"TP53": 9.0, "EGFR": 1.0, "KRAS": 7.0}, PANEL)
    b = preprocess_genomics({"KRAS": 7.0, "EGFR": 1.0, "TP53": 9.0}, PANEL)
    assert a.tobytes() == b.tobytes() and a.dtype == np.float32
    # z = (x - mean) / std with the panel's statistics
    assert a.tolist() == [2.0, -2.0, 2.0]


def test_extra_genes_are_ignored_and_values_may_be_strings_or_numpy() -> None:
    out = preprocess_genomics({"EGFR": np.float64(2.5), "TP53": "5", "KRAS": 3, "MYC": 100.0}, PANEL)
    assert out.tolist() == [0.0, 1.0, 1.0]


def test_missing_genes_are_named() -> None:
    with pytest.raises(GenePanelError) as info:
        preprocess_genomics({"TP53": 1.0}, PANEL)
    assert info.value.kind == "gene_panel_mismatch" and info.value.http_status == 422
    assert info.value.message == "2 of 3 panel genes missing: EGFR, KRAS"


def test_more_than_twenty_missing_genes_are_summarised() -> None:
    genes = [f"G{i:02d}" for i in range(25)]
    panel = GenePanel(features=genes, mean=[0.0] * 25, std=[1.0] * 25)
    with pytest.raises(GenePanelError) as info:
        preprocess_genomics({"G00": 1.0, "G01": 1.0}, panel)
    listed = ", ".join(genes[2:22])
    assert info.value.message == f"23 of 25 panel genes missing: {listed} and 3 more"
    assert "G22" not in info.value.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -np.inf, None, "high", [1.0]])
def test_non_finite_or_non_numeric_values_are_named(bad) -> None:
    with pytest.raises(InvalidValueError) as info:
        preprocess_genomics({"TP53": 1.0, "EGFR": bad, "KRAS": 2.0}, PANEL)
    assert info.value.message == "1 genes have values that are not finite numbers: EGFR"


def test_fit_gene_panel_uses_training_statistics_and_guards_constant_genes() -> None:
    rows = pd.DataFrame({"A": [1.0, 3.0, np.nan, 5.0], "B": [2.0, 2.0, 2.0, 2.0], "C": [0.0, 1.0, 0.0, 1.0]})
    panel = fit_gene_panel(rows, ["C", "A", "B"])
    assert panel.features == ["C", "A", "B"]
    assert panel.mean == pytest.approx([0.5, 3.0, 2.0])  # NaN ignored
    assert panel.std == pytest.approx([0.5, np.sqrt(8 / 3), 1.0])  # constant gene -> std 1
    z = preprocess_genomics({"A": 3.0, "B": 2.0, "C": 1.0}, panel)
    assert z.tolist() == pytest.approx([1.0, 0.0, 0.0])


# ------------------------------------------------------------------ omics blocks, clinical


MUTATIONS = OmicsBlock(name="mutation", features=["TP53_mut", "EGFR_mut"], mean=[0.5, 0.2], std=[0.5, 0.4])
EXPRESSION = OmicsBlock(name="expression", features=PANEL.features, mean=PANEL.mean, std=PANEL.std)
CLINICAL_SPEC = ClinicalSpec(
    numeric={"age": [60.0, 10.0]},
    categorical={"treatment": ["chemo", "targeted"], "sex": ["F", "M"]},
    treatment="treatment",
)


def test_omics_blocks_are_concatenated_and_a_block_without_values_is_absent() -> None:
    values = {"TP53": 9.0, "EGFR": 1.0, "KRAS": 7.0, "TP53_mut": float("nan"), "EGFR_mut": None}
    omics = preprocess_omics(values, [EXPRESSION, MUTATIONS])
    assert omics.present == ["expression"]
    assert omics.values.tolist() == [2.0, -2.0, 2.0, 0.0, 0.0]
    both = preprocess_omics({**values, "TP53_mut": 1, "EGFR_mut": 0}, [EXPRESSION, MUTATIONS])
    assert both.present == ["expression", "mutation"]
    assert both.values[3:].tolist() == pytest.approx([1.0, -0.5])


def test_an_incomplete_block_is_imputed_up_to_its_cap_then_absent() -> None:
    half = preprocess_omics({"TP53_mut": 1.0}, [MUTATIONS])  # 1 of 2 missing: the default cap
    assert half.present == ["mutation"] and half.values.tolist() == pytest.approx([1.0, 0.0])
    assert half.filled["mutation"].answer() == {"imputed": 1, "of": 2, "treated_as_absent": False}
    strict = preprocess_omics({"TP53_mut": 1.0}, [dataclasses.replace(MUTATIONS, max_imputed=0.0)])
    assert strict.present == [] and strict.values.tolist() == [0.0, 0.0]
    assert strict.filled["mutation"].answer() == {"imputed": 1, "of": 2, "treated_as_absent": True}


def test_no_omics_feature_at_all_is_a_panel_error() -> None:
    with pytest.raises(GenePanelError, match="none of the model's 5 omics features given"):
        preprocess_omics({"MYC": 1.0}, [EXPRESSION, MUTATIONS])


def test_clinical_covariates_are_scaled_and_one_hot() -> None:
    out = preprocess_clinical({"age": 70, "treatment": "targeted", "sex": "F", "site": "x"}, CLINICAL_SPEC).values
    assert out is not None
    # Covariates in name order (ClinicalSpec sorts them, so the contract's JSON keeps it).
    assert CLINICAL_SPEC.features == ["age", "sex=F", "sex=M", "treatment=chemo", "treatment=targeted"]
    assert out.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert CLINICAL_SPEC.treatments == ["chemo", "targeted"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"age": 70, "sex": "F"}, "clinical covariates missing: treatment"),
        (
            {"age": 70, "treatment": "surgery", "sex": "F"},
            "clinical covariate treatment='surgery' is not one of ['chemo', 'targeted']",
        ),
        ({"age": "old", "treatment": "chemo", "sex": "F"}, "clinical covariate age is not a number"),
    ],
)
def test_bad_clinical_input_is_named(values, message) -> None:
    with pytest.raises(ClinicalInputError) as info:
        preprocess_clinical(values, CLINICAL_SPEC)
    assert info.value.message == message and info.value.http_status == 422


def test_fit_clinical_spec_takes_training_levels_and_statistics() -> None:
    rows = pd.DataFrame({"age": [50, 70], "treatment": ["targeted", "chemo"], "sex": ["M", None]})
    spec = fit_clinical_spec(rows, ["age"], ["treatment", "sex"], treatment="treatment", min_level_count=1)
    assert spec.numeric == {"age": [60.0, 10.0]}
    # The treatment keeps exactly its levels; other covariates gain "other" (unseen, missing).
    assert spec.categorical == {"treatment": ["chemo", "targeted"], "sex": ["M", "other"]}


# ------------------------------------------------------------------ presence mask


def _contract(**changes) -> ModelContract:
    base = ModelContract(
        name="t",
        version="1",
        task="classification:response",
        labels=["no", "yes"],
        image=ImageGeometry(target_shape=(4, 6, 6)),
        omics=[EXPRESSION],
    )
    return dataclasses.replace(base, **changes)


IMAGE = np.full((1, 4, 6, 6), 0.25, np.float32)
GENES = OmicsInput(np.array([0.5, -1.0, 2.0], np.float32), ["expression"])


def test_both_modalities() -> None:
    inputs = build_inputs(_contract(), IMAGE, GENES)
    assert inputs.modalities_used == ["image", "expression"]
    assert inputs.presence.tolist() == [1.0, 1.0] and inputs.presence.dtype == np.float32
    assert np.array_equal(inputs.image, IMAGE) and np.array_equal(inputs.genomics, GENES.values)
    assert list(inputs.as_feed()) == ["image", "genomics", "clinical", "presence"]
    # No clinical block: one zero column, so every model has the same four inputs.
    assert inputs.clinical.tolist() == [0.0]


def test_image_only_feeds_zero_genomics() -> None:
    inputs = build_inputs(_contract(), IMAGE, None)
    assert inputs.modalities_used == ["image"]
    assert inputs.presence.tolist() == [1.0, 0.0]
    assert inputs.genomics.shape == (3,) and np.all(inputs.genomics == 0)


def test_genomics_only_feeds_a_zero_image_of_the_contract_shape() -> None:
    inputs = build_inputs(_contract(), None, GENES)
    assert inputs.modalities_used == ["expression"]
    assert inputs.presence.tolist() == [0.0, 1.0]
    assert inputs.image.shape == (1, 4, 6, 6) and np.all(inputs.image == 0)
    assert inputs.image.dtype == np.float32


def test_blocks_and_clinical_each_have_a_presence_bit() -> None:
    contract = _contract(
        omics=[EXPRESSION, MUTATIONS],
        clinical=CLINICAL_SPEC,
        trained_modalities=["image", "genomics", "clinical"],
        may_be_missing=["image", "genomics", "clinical"],
    )
    assert contract.modalities == ["image", "expression", "mutation", "clinical"]
    clinical = np.arange(5, dtype=np.float32)
    inputs = build_inputs(contract, None, GENES_AND_ZERO_MUTATIONS, ClinicalInput(clinical, BlockFill(0, 3)))
    assert inputs.modalities_used == ["expression", "clinical"]
    assert inputs.presence.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert inputs.genomics.tolist() == [0.5, -1.0, 2.0, 0.0, 0.0]
    assert inputs.clinical.tolist() == clinical.tolist()


GENES_AND_ZERO_MUTATIONS = OmicsInput(np.array([0.5, -1.0, 2.0, 0.0, 0.0], np.float32), ["expression"])


def test_no_modality_is_an_error() -> None:
    with pytest.raises(NoModalityError) as info:
        build_inputs(_contract(), None, None)
    assert info.value.kind == "no_modality"
    assert info.value.message == "none of the model's modalities ['image', 'genomics'] was provided"


def test_modality_the_model_was_not_trained_with_is_fed_as_absent() -> None:
    image_model = _contract(trained_modalities=["image"], may_be_missing=[])
    inputs = build_inputs(image_model, IMAGE, GENES)
    assert inputs.modalities_used == ["image"]
    assert inputs.presence.tolist() == [1.0, 0.0] and np.all(inputs.genomics == 0)
    with pytest.raises(NoModalityError, match="none of the model's modalities \\['image'\\] was provided"):
        build_inputs(image_model, None, GENES)


def test_required_modality_may_not_be_missing() -> None:
    needs_image = _contract(may_be_missing=["genomics"])
    with pytest.raises(NoModalityError, match=r"^model requires image$"):
        build_inputs(needs_image, None, GENES)
    assert build_inputs(needs_image, IMAGE, None).modalities_used == ["image"]


def test_image_of_the_wrong_shape_is_rejected() -> None:
    with pytest.raises(GeometryError, match=r"image tensor shape \(1, 4, 6, 5\) differs from contract \(1, 4, 6, 6\)"):
        build_inputs(_contract(), np.zeros((1, 4, 6, 5), np.float32), GENES)
