"""The model contract: everything serving must know about a model, carried inside the
ONNX file as metadata so training and serving cannot drift apart.

Serving validates every request against it; training writes it at export time."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radfusion.benefit import BenefitDraws
from radfusion.conformal import ConformalSpec

log = logging.getLogger(__name__)

CONTRACT_METADATA_KEY = "radfusion.contract"
CONTRACT_SCHEMA_VERSION = 2

# Every model has the same four inputs, whatever blocks it uses: the image, all omics
# blocks concatenated in contract order, the encoded clinical covariates, and the
# presence mask (one bit per modality, in ModelContract.modalities order).
INPUT_NAMES: tuple[str, ...] = ("image", "genomics", "clinical", "presence")
# The model returns logits; the runtime turns them into probabilities with the
# contract's temperature, so calibration can change without re-exporting the model.
OUTPUT_NAMES: tuple[str, ...] = ("logits",)
# The modality name a request uses for "all omics blocks" (e.g. trained_modalities of
# an image-only baseline vs a genomics-only one).
GENOMICS = "genomics"
CLINICAL = "clinical"
# The level unseen, missing and too-rare categorical values are mapped to.
OTHER_LEVEL = "other"
# Share of a block's features that may be imputed before the block counts as absent.
DEFAULT_MAX_IMPUTED = 0.5


@dataclass
class ImageGeometry:
    """How a DICOM series becomes the model's image tensor (see radfusion.preprocess)."""

    spatial_dims: int = 3
    # (slices, rows, cols) after resampling; the volume is centre-cropped/padded to it.
    target_shape: tuple[int, int, int] = (32, 48, 48)
    # (slice, row, col) spacing in mm the volume is resampled to before cropping.
    target_spacing: tuple[float, float, float] = (5.0, 8.0, 8.0)
    # HU window mapped linearly to [0, 1] and clipped.
    window: tuple[float, float] = (-150.0, 250.0)
    modalities: tuple[str, ...] = ("CT",)
    min_slices: int = 8
    # Series selection (radfusion.dicom.series.SelectionRules): acquisition plane
    # ("axial"/"coronal"/"sagittal", None = any), a SeriesDescription regex ("" = any),
    # and "thinnest" or "most_slices" first among the series that qualify.
    series_plane: str | None = None
    series_description: str = ""
    series_preference: str = "thinnest"
    # Geometry repair (radfusion.dicom.geometry.GeometryPolicy): the largest slice step
    # filled by interpolation, in typical steps (1.0 = reject any gap), and the largest
    # gantry tilt corrected by resampling (0 = reject any tilt).
    max_gap_factor: float = 2.0
    max_tilt_degrees: float = 30.0


@dataclass
class GenePanel:
    """Genomic features in model order with the training-set normalisation statistics."""

    features: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (len(self.features) == len(self.mean) == len(self.std)):
            raise ValueError("gene panel features, mean and std differ in length")
        if len(set(self.features)) != len(self.features):
            raise ValueError("gene panel has duplicate features")


@dataclass
class OmicsBlock(GenePanel):
    """One omics block (expression, mutation, copy number): its own panel, its own
    encoder in the model and its own presence bit. Features are named as requests and
    tables name them: ``EGFR`` (expression), ``EGFR_mut``, ``EGFR_cn``."""

    name: str = "expression"
    # The missing-data policy (radfusion.preprocess): a feature a row or request lacks
    # takes its training median (``fill``, raw scale; empty: the training mean), as long
    # as at most ``max_imputed`` of the block's features are missing; beyond that the
    # block counts as absent (its presence bit is 0) rather than invented.
    fill: list[float] = field(default_factory=list)
    max_imputed: float = DEFAULT_MAX_IMPUTED

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fill and len(self.fill) != len(self.features):
            raise ValueError(f"omics block {self.name}: fill and features differ in length")
        if not 0.0 <= self.max_imputed <= 1.0:
            raise ValueError(f"omics block {self.name}: max_imputed must lie in [0, 1]")

    @classmethod
    def from_dict(cls, block: dict) -> OmicsBlock:
        """A block as a contract or checkpoint stores it; earlier versions said
        ``impute_missing`` (true: any share of the block may be imputed; false: none)."""
        block = dict(block)
        if "impute_missing" in block:
            block.setdefault("max_imputed", 1.0 if block.pop("impute_missing") else 0.0)
        return cls(**block)

    @property
    def fill_values(self) -> list[float]:
        """The value each missing feature takes (raw scale)."""
        return list(self.fill) if self.fill else list(self.mean)


@dataclass
class ClinicalSpec:
    """Clinical covariates as one input block: numeric ones z-scored with training
    statistics, categorical ones one-hot over their training levels. The treatment
    is a categorical covariate, so a model can be asked "what if" for each level."""

    numeric: dict[str, list[float]] = field(default_factory=dict)  # name -> [mean, std]
    categorical: dict[str, list[str]] = field(default_factory=dict)  # name -> levels
    treatment: str | None = None  # which categorical covariate is the treatment
    # The missing-data policy (radfusion.preprocess), fitted on the training split:
    # a missing numeric covariate takes its training median (``fill``; a covariate
    # without one is required), and those in ``indicators`` (missing in training, so
    # the pattern may carry signal) get a 0/1 "<name>=missing" column. A categorical
    # value that is missing, unseen or merged (``merged``: levels seen fewer times than
    # the data module's min_level_count) becomes OTHER_LEVEL where the levels hold it.
    # The treatment is never imputed. Beyond ``max_imputed`` of the covariates missing,
    # the clinical block counts as absent.
    fill: dict[str, float] = field(default_factory=dict)
    indicators: list[str] = field(default_factory=list)
    merged: dict[str, list[str]] = field(default_factory=dict)
    max_imputed: float = DEFAULT_MAX_IMPUTED
    # Treatment ranking recommends leaving the reference (first level, standard of
    # care) only when another raises the log-odds of response by more than this
    # (export writes radfusion.treatment.DEFAULT_SWITCH_MARGIN, the margin the
    # evidence check used); None: that default.
    switch_margin: float | None = None

    def __post_init__(self) -> None:
        # Covariates in name order: the encoded column order must not depend on dict
        # order, which the contract's JSON (sort_keys) does not keep.
        self.numeric = dict(sorted(self.numeric.items()))
        self.categorical = dict(sorted(self.categorical.items()))
        self.indicators = sorted(self.indicators)
        if set(self.fill) - set(self.numeric) or set(self.indicators) - set(self.numeric):
            raise ValueError("clinical fill values and missingness indicators must name numeric covariates")
        if self.treatment is not None and self.treatment not in self.categorical:
            raise ValueError(f"treatment covariate {self.treatment!r} is not a categorical covariate")

    @property
    def features(self) -> list[str]:
        """Encoded column names, in input order."""
        names = [*self.numeric, *(f"{name}=missing" for name in self.indicators)]
        for name, levels in self.categorical.items():
            names += [f"{name}={level}" for level in levels]
        return names

    @property
    def covariates(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def treatments(self) -> list[str]:
        return list(self.categorical[self.treatment]) if self.treatment else []

    @property
    def treatment_columns(self) -> list[int]:
        """The encoded column of each treatment level, in ``treatments`` order."""
        features = self.features
        return [features.index(f"{self.treatment}={level}") for level in self.treatments]


@dataclass
class RuntimeChoice:
    """How ONNX Runtime opens the model on CPU: the fastest of the configurations timed
    on the exported model at export (radfusion.training.runtime_choice), on the
    exporting machine. radfusion.runtime.OnnxModel opens the model this way; a
    provider this installation lacks falls back to the CPU provider's defaults (logged).
    GPU devices ignore it."""

    # "CPUExecutionProvider", or "OpenVINOExecutionProvider" where onnxruntime-openvino
    # was installed and measured faster.
    provider: str = "CPUExecutionProvider"
    # Intra-op threads; 0: ONNX Runtime's default (the cores). Applied only on a machine
    # with ``cpus`` cores (a thread count measured on 2 cores says nothing about 32);
    # an explicit count (RADFUSION_ORT_THREADS, --threads) always wins.
    threads: int = 0
    # Whether idle intra-op threads spin waiting for work (session.intra_op.allow_spinning):
    # lower latency on a machine of one's own, CPU taken from others on a shared one.
    spinning: bool = True
    # The exported graph: "folded" (3D convolutions as 2D ones, radfusion.training.
    # onnx_layout) or "plain".
    graph: str = "folded"
    cpus: int = 0
    # Each candidate's median ms at batch 1 and at batch 16, as measured.
    timings_ms: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> RuntimeChoice:
        """As the contract stores it; what a later version added is left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ModelContract:
    name: str
    version: str
    task: str
    labels: list[str]
    image: ImageGeometry
    omics: list[OmicsBlock]
    clinical: ClinicalSpec | None = None
    # Modalities (names from `modalities`, or "genomics" for every omics block) the
    # model was trained to use; the others are always fed as absent.
    trained_modalities: list[str] = field(default_factory=lambda: ["image", GENOMICS])
    # Modalities a request may omit and still get a prediction.
    may_be_missing: list[str] = field(default_factory=lambda: ["image", GENOMICS])
    positive_label: str | None = None
    # Temperature the logits are divided by (fitted on validation; 1 = uncalibrated).
    temperature: float = 1.0
    # Multi-label: one temperature per label (each label's own binary calibration),
    # used instead of ``temperature``; empty for other tasks.
    label_temperatures: list[float] = field(default_factory=list)
    # Classification: the prediction sets' thresholds (radfusion.conformal), fitted at
    # export on the validation split; None: the model answers without sets.
    conformal: ConformalSpec | None = None
    # A model with a treatment term: draws of each treatment's benefit (radfusion.benefit),
    # fitted at export; None: the ranking has no intervals.
    treatment_benefit: BenefitDraws | None = None
    # Discrete-time survival ("survival:discrete"): each output is the hazard logit
    # of the interval ending at this many months (upper edges, increasing). Empty
    # for other tasks.
    time_bins: list[float] = field(default_factory=list)
    cohort_hash: str = ""
    # How ONNX Runtime runs it fastest, measured at export; None: ONNX Runtime's
    # defaults (models exported before it was recorded).
    runtime: RuntimeChoice | None = None
    # The input features that move the model's output most (attributions on the
    # validation split, written at export), most important first: each {"feature",
    # "block", "importance"}; a lab checks its panel covers them (GET /contract).
    feature_importance: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    # How the model was trained where that is not one site's `radfusion train`: a
    # federated run's sites, rounds, aggregation and privacy budget. Empty: not written.
    provenance: dict[str, Any] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=lambda: list(INPUT_NAMES))
    output_names: list[str] = field(default_factory=lambda: list(OUTPUT_NAMES))
    schema_version: int = CONTRACT_SCHEMA_VERSION

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.treatment_benefit is not None:
            data["treatment_benefit"] = self.treatment_benefit.to_dict()
        for optional in ("conformal", "treatment_benefit", "runtime"):
            if data[optional] is None:  # a contract without it stays readable by earlier versions
                del data[optional]
        if not data["provenance"]:
            del data["provenance"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelContract:
        data = dict(data)
        if data.get("schema_version") != CONTRACT_SCHEMA_VERSION:
            raise ValueError(f"unsupported contract schema {data.get('schema_version')!r}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            # A later radfusion's additions: what this version does not know, it cannot apply.
            log.warning("contract fields this radfusion version ignores: %s", ", ".join(sorted(unknown)))
            data = {k: v for k, v in data.items() if k not in unknown}
        clinical = data.pop("clinical", None)
        conformal = data.pop("conformal", None)
        benefit = data.pop("treatment_benefit", None)
        runtime = data.pop("runtime", None)
        omics = [OmicsBlock.from_dict(block) for block in data.pop("omics")]
        image = data.pop("image")
        image = ImageGeometry(
            **{
                **image,
                "target_shape": tuple(image["target_shape"]),
                "target_spacing": tuple(image["target_spacing"]),
                "window": tuple(image["window"]),
                "modalities": tuple(image["modalities"]),
            }
        )
        return cls(
            image=image,
            omics=omics,
            clinical=ClinicalSpec(**clinical) if clinical else None,
            conformal=ConformalSpec(**conformal) if conformal else None,
            treatment_benefit=BenefitDraws(**benefit) if benefit else None,
            runtime=RuntimeChoice.from_dict(runtime) if runtime else None,
            **data,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelContract:
        return cls.from_dict(json.loads(text))

    def __post_init__(self) -> None:
        names = [block.name for block in self.omics]
        if len(set(names)) != len(names) or {"image", GENOMICS, CLINICAL} & set(names):
            raise ValueError(f"omics block names must be unique and not image/genomics/clinical: {names}")
        features = [f for block in self.omics for f in block.features]
        if len(set(features)) != len(features):
            raise ValueError("a feature appears in more than one omics block")
        if self.task == "survival:discrete" and len(self.time_bins) != len(self.labels):
            raise ValueError(
                f"discrete-time survival needs one time bin per output: {len(self.time_bins)} vs {len(self.labels)}"
            )
        if self.conformal is not None and len(self.conformal.thresholds) != len(self.labels):
            raise ValueError(f"{len(self.conformal.thresholds)} conformal thresholds for {len(self.labels)} labels")
        if self.label_temperatures and (
            len(self.label_temperatures) != len(self.labels)
            or not all(math.isfinite(t) and t > 0 for t in self.label_temperatures)
        ):
            raise ValueError(f"label_temperatures must be {len(self.labels)} positive numbers, one per label")
        unknown = set(self.trained_modalities) | set(self.may_be_missing)
        unknown -= {*self.modalities, GENOMICS}
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; the model has {self.modalities}")

    @property
    def modalities(self) -> list[str]:
        """Presence-mask order: the image, each omics block, then clinical if any."""
        return ["image", *(b.name for b in self.omics), *([CLINICAL] if self.clinical else [])]

    def trains(self, modality: str) -> bool:
        """Whether the model uses ``modality`` (an omics block counts as "genomics")."""
        return modality in self.trained_modalities or (
            modality in self.omics_names and GENOMICS in self.trained_modalities
        )

    def may_miss(self, modality: str) -> bool:
        return modality in self.may_be_missing or (modality in self.omics_names and GENOMICS in self.may_be_missing)

    @property
    def omics_names(self) -> list[str]:
        return [b.name for b in self.omics]

    @property
    def uses_image(self) -> bool:
        return self.trains("image")

    @property
    def uses_genomics(self) -> bool:
        return any(self.trains(b.name) for b in self.omics)

    @property
    def uses_clinical(self) -> bool:
        return self.clinical is not None and self.trains(CLINICAL)

    @property
    def genomics(self) -> GenePanel:
        """All omics blocks as one panel, in input order (the `genomics` input)."""
        return GenePanel(
            features=[f for b in self.omics for f in b.features],
            mean=[m for b in self.omics for m in b.mean],
            std=[s for b in self.omics for s in b.std],
        )

    @property
    def clinical_width(self) -> int:
        """Width of the `clinical` input: one zero column when the model has no
        clinical block, so every model has the same four inputs."""
        return len(self.clinical.features) if self.clinical else 1


def write_contract_to_onnx(onnx_path: Path, contract: ModelContract) -> None:
    """Embed the contract in the ONNX file's metadata_props (in place)."""
    import onnx

    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key != CONTRACT_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    prop = model.metadata_props.add()
    prop.key = CONTRACT_METADATA_KEY
    prop.value = contract.to_json()
    model.producer_name = "radfusion"
    onnx.save(model, str(onnx_path))


def read_contract_from_onnx(onnx_path: Path) -> ModelContract:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == CONTRACT_METADATA_KEY:
            return ModelContract.from_json(prop.value)
    raise ValueError(f"{Path(onnx_path).name} carries no radfusion model contract")
