"""The linear path (training/fusion/linear.py), the final-weights checkpoint
(``FusionModule(checkpoint="last")``) and configs/experiment/small_cohort.yaml, the
configuration for omics/clinical cohorts of 100-500 patients that uses both.

Training tests run the real FusionModule under a Lightning Trainer on arrays fed as
the data module's ``collate`` gives them (no cohort folder): a simulated Cox cohort
with a known truth."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from radfusion.contract import ClinicalSpec, ImageGeometry
from radfusion.training.fusion import FusionNet, NetworkConfig
from radfusion.training.module import FusionModule, OptimiserConfig
from radfusion.training.tasks import concordance
from tests.support.paths import CONFIGS

OMICS = {"expression": 12, "mutation": 5}
N_CLINICAL = 3
MODALITIES = ("genomics", "clinical")


def linear_net(seed: int = 0, modalities=MODALITIES, **config) -> FusionNet:
    torch.manual_seed(seed)
    net = FusionNet(
        OMICS, N_CLINICAL, 1, NetworkConfig(modalities=modalities, embed_dim=8, linear_path=True, **config)
    ).eval()
    with torch.no_grad():
        net.linear_path.weights.weight.copy_(torch.randn(1, 17 + N_CLINICAL))
    return net


def inputs(batch: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.zeros(batch, 1, 1, 1, 1),
        torch.randn(batch, sum(OMICS.values()), generator=g),
        torch.randn(batch, N_CLINICAL, generator=g),
    )


# --------------------------------------------------------------------------- the net


def test_linear_path_starts_at_zero_and_is_off_by_default():
    assert NetworkConfig().linear_path is False
    assert FusionNet(OMICS, N_CLINICAL, 1, NetworkConfig(modalities=MODALITIES)).linear_path is None
    net = FusionNet(OMICS, N_CLINICAL, 1, NetworkConfig(modalities=MODALITIES, linear_path=True))
    assert torch.count_nonzero(net.linear_path.weights.weight) == 0


def test_linear_path_adds_the_weighted_inputs_of_present_blocks_only():
    net = linear_net()
    image, genomics, clinical = inputs()
    weight = net.linear_path.weights.weight[0].detach().clone()
    full = torch.ones(4, 4)  # image, expression, mutation, clinical
    with torch.no_grad():
        base = net(image, genomics, clinical, full)
        net.linear_path.weights.weight.zero_()
        without = net(image, genomics, clinical, full)
        net.linear_path.weights.weight[0] = weight
        # Expression absent: its 12 features contribute nothing, the rest still do.
        no_expression = torch.tensor([1.0, 0.0, 1.0, 1.0]).expand(4, -1)
        partial = net(image, genomics, clinical, no_expression) - net.head(
            net.embeddings(image, genomics, clinical, no_expression), no_expression, None
        )
    x = torch.cat([genomics, clinical], dim=1)
    assert torch.allclose(base - without, (x @ weight)[:, None], atol=1e-5)
    assert torch.allclose(partial[:, 0], x[:, 12:] @ weight[12:], atol=1e-5)


def test_linear_path_reads_only_the_blocks_the_model_uses():
    net = linear_net(modalities=("expression",))
    _, genomics, clinical = inputs()
    weight = net.linear_path.weights.weight[0].detach().clone()
    with torch.no_grad():
        out = net.linear_path(genomics, clinical, torch.ones(4, 4))
    assert torch.allclose(out[:, 0], genomics[:, :12] @ weight[:12], atol=1e-5)
    # The penalty counts only the read features' weights.
    expected = 0.5 * weight[:12].pow(2).sum() + 0.1 * weight[:12].abs().sum()
    assert torch.isclose(net.linear_path.penalty(0.5, 0.1), expected)


def test_squares_add_each_omics_feature_squared_and_standardised():
    torch.manual_seed(0)
    net = FusionNet(
        OMICS, N_CLINICAL, 1, NetworkConfig(modalities=MODALITIES, embed_dim=8, linear_path=True, linear_squares=True)
    ).eval()
    assert net.linear_path.weights.in_features == 2 * 17 + N_CLINICAL
    _, genomics, clinical = inputs()
    weight = torch.randn(2 * 17 + N_CLINICAL)
    no_mutation = torch.tensor([0.0, 1.0, 0.0, 1.0]).expand(4, -1)
    with torch.no_grad():
        net.linear_path.weights.weight[0] = weight
        out = net.linear_path(genomics, clinical, no_mutation)[:, 0]
    squares = (genomics**2 - 1) / 2**0.5
    keep = torch.cat([torch.ones(12), torch.zeros(5)])  # the mutation block is absent
    expected = (genomics * keep) @ weight[:17] + (squares * keep) @ weight[17:34] + clinical @ weight[34:]
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_model_without_clinical_covariates_has_a_linear_path_over_its_omics():
    torch.manual_seed(0)
    net = FusionNet(OMICS, 0, 1, NetworkConfig(modalities=("genomics",), embed_dim=8, linear_path=True)).eval()
    assert net.linear_path.weights.in_features == 17 + 1  # the one-column zero clinical input
    with torch.no_grad():
        net.linear_path.weights.weight.fill_(1.0)
        out = net.linear_path(torch.ones(2, 17), torch.full((2, 1), 5.0), torch.ones(2, 3))
    assert torch.allclose(out, torch.full((2, 1), 17.0))


def test_the_linear_path_is_saved_and_restored_with_the_weights(tmp_path):
    net = linear_net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    again = FusionNet(OMICS, N_CLINICAL, 1, net.config)
    again.load_state_dict(torch.load(tmp_path / "w.pt"))
    assert torch.equal(again.linear_path.weights.weight, net.linear_path.weights.weight)


# The dynamo exporter takes 10-50 s per model on 2 shared cores.
@pytest.mark.slow
def test_onnx_export_with_the_linear_path_matches_pytorch(tiny_contract, tmp_path):
    from radfusion.runtime import OnnxModel
    from radfusion.training.export import export_onnx, group_patterns

    contract = dataclasses.replace(
        tiny_contract, clinical=ClinicalSpec(numeric={"age": [60.0, 10.0]}, categorical={"grade": ["1", "2"]})
    )
    omics = {b.name: len(b.features) for b in contract.omics}
    torch.manual_seed(0)
    net = FusionNet(omics, contract.clinical_width, 1, NetworkConfig(modalities=MODALITIES, linear_path=True)).eval()
    with torch.no_grad():
        net.linear_path.weights.weight.normal_()
    path = tmp_path / "linear.onnx"
    export_onnx(net, contract, path)
    model = OnnxModel(path, device="cpu")
    g = torch.Generator().manual_seed(5)
    image = torch.zeros(5, 1, *contract.image.target_shape)
    genomics = torch.randn(5, len(contract.genomics.features), generator=g)
    clinical = torch.randn(5, contract.clinical_width, generator=g)
    with torch.no_grad():
        for pattern in group_patterns(net):
            presence = pattern.expand(5, -1).clone()
            expected = net(image, genomics, clinical, presence).numpy()
            got = model.logits(image.numpy(), genomics.numpy(), clinical.numpy(), presence.numpy())
            assert np.max(np.abs(expected - got)) < 1e-4, pattern


# ---------------------------------------------------------------------- training


def cox_cohort(n: int, seed: int, n_genes: int = 30):
    """A Cox cohort whose risk is linear in genes 0 and 1 and U-shaped in gene 2 (both
    unusually high and unusually low expression worse); the other genes and the
    clinical covariates carry none. Exponential times, about 35% censored."""
    rng = np.random.default_rng(seed)
    genes = rng.standard_normal((n, n_genes)).astype(np.float32)
    clinical = rng.standard_normal((n, N_CLINICAL)).astype(np.float32)
    risk = 0.7 * genes[:, 0] - 0.7 * genes[:, 1] + 0.8 * (genes[:, 2] ** 2 - 1) / 2**0.5
    time = rng.exponential(np.exp(-risk))
    censor = rng.exponential(1.5 * np.median(time), n)
    return genes, clinical, np.minimum(time, censor), (time <= censor).astype(int)


def ridge_cox_risk(x: np.ndarray, time: np.ndarray, event: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """The classical reference: lifelines' ridge Cox (penalizer 0.1) on the same inputs."""
    import pandas as pd
    from lifelines import CoxPHFitter

    columns = [f"x{i}" for i in range(x.shape[1])]
    frame = pd.DataFrame(x, columns=columns).assign(time=time, event=event)
    model = CoxPHFitter(penalizer=0.1).fit(frame, "time", "event")
    return model.predict_log_partial_hazard(pd.DataFrame(x_new, columns=columns)).to_numpy()


def records(genes, clinical, time, event) -> list[dict]:
    return [
        {
            "patient_id": str(i),
            "image": np.zeros((1, 1, 1, 1), np.float32),
            "genomics": genes[i],
            "clinical": clinical[i],
            "presence": np.array([0, 1, 1], np.float32),
            "label": int(event[i]),
            "time": float(time[i]),
            "event": int(event[i]),
        }
        for i in range(len(time))
    ]


class ArrayData(L.LightningDataModule):
    """What FusionModule reads from a data module, over in-memory records."""

    def __init__(self, train: list[dict], val: list[dict], batch_size: int):
        super().__init__()
        self.save_hyperparameters({"target": "event"})
        self.records = {"train": train, "val": val}
        self.batch_size = batch_size
        self.geometry = ImageGeometry()
        self.omics, self.clinical, self.labels, self.cohort_hash = [], None, ["censored", "event"], "arrays"

    def _loader(self, part: str, shuffle: bool, seed: int | None = None):
        from radfusion.training.data import collate

        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return torch.utils.data.DataLoader(
            self.records[part], self.batch_size, shuffle=shuffle, collate_fn=collate, generator=generator
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def statistics_dataloader(self, seed: int = 0):
        return self._loader("train", shuffle=True, seed=seed)


def fit(module: FusionModule, data: ArrayData, root, epochs: int) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    return trainer


def small_cohort_module(n_genes: int, seed: int, linear_only: bool = False) -> FusionModule:
    """FusionModule as configs/experiment/small_cohort.yaml builds it."""
    model = yaml.safe_load((CONFIGS / "experiment" / "small_cohort.yaml").read_text())["model"]
    L.seed_everything(seed, verbose=False)
    module = FusionModule(
        {"expression": n_genes},
        N_CLINICAL,
        2,
        network={**model["network"], "modalities": list(MODALITIES)},
        task={"kind": "survival_cox"},
        optimiser=model["optimiser"],
        modality_dropout=model["modality_dropout"],
        checkpoint=model["checkpoint"],
    )
    if linear_only:
        for p in module.net.head.parameters():
            p.requires_grad_(False)
            p.data.zero_()
    return module


def risk_of(module: FusionModule, recs: list[dict]) -> np.ndarray:
    from radfusion.training.data import collate

    batch = collate(recs)
    module.eval()
    with torch.no_grad():
        return module(batch["image"], batch["genomics"], batch["clinical"], batch["presence"])[:, 0].numpy()


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads per tiny step lost
    10x to contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_small_cohort_config_finds_linear_and_u_shaped_effects(seed, tmp_path, one_thread):
    """200 training patients, 30 genes: the model trained as small_cohort.yaml says
    ranks 400 new patients at least as well as a ridge Cox on the same inputs (which
    cannot see the U shape; measured +0.04 and +0.02 on these seeds), its largest
    linear weights are genes 0 and 1 and its largest square weight gene 2's; and
    best.ckpt holds the final weights (checkpoint: last, no validation part)."""
    epochs = yaml.safe_load((CONFIGS / "experiment" / "small_cohort.yaml").read_text())["trainer"]["max_epochs"]
    genes, clinical, time, event = cox_cohort(200, seed)
    new_genes, new_clinical, new_time, new_event = cox_cohort(400, seed + 100)
    module = small_cohort_module(genes.shape[1], seed)
    fit(module, ArrayData(records(genes, clinical, time, event), [], batch_size=512), tmp_path, epochs)

    predicted = risk_of(module, records(new_genes, new_clinical, new_time, new_event))
    ridge = ridge_cox_risk(
        np.concatenate([genes, clinical], 1), time, event, np.concatenate([new_genes, new_clinical], 1)
    )
    assert concordance(predicted, new_time, new_event) > concordance(ridge, new_time, new_event) - 0.01
    n = genes.shape[1]
    weight = module.net.linear_path.weights.weight[0].detach().abs()
    assert set(torch.topk(weight[:n], 2).indices.tolist()) == {0, 1}
    squares = weight[n : 2 * n]
    assert int(squares.argmax()) == 2 and squares[2] > 1.5 * torch.topk(squares, 2).values[1]

    saved = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert saved["hyper_parameters"]["checkpoint"] == "last"
    for name, value in module.state_dict().items():
        assert torch.equal(saved["state_dict"][name], value), name


@pytest.mark.slow
def test_checkpoint_best_still_picks_the_best_validation_epoch(tmp_path, one_thread):
    genes, clinical, time, event = cox_cohort(120, 3)
    data = ArrayData(
        records(genes[:90], clinical[:90], time[:90], event[:90]),
        records(genes[90:], clinical[90:], time[90:], event[90:]),
        16,
    )
    L.seed_everything(0, verbose=False)
    module = FusionModule(
        {"expression": genes.shape[1]}, N_CLINICAL, 2, network={"modalities": list(MODALITIES)}, task="survival_cox"
    )
    trainer = fit(module, data, tmp_path, 4)
    callback = trainer.checkpoint_callback
    assert callback.best_model_path.endswith("best.ckpt")
    saved = torch.load(callback.best_model_path, weights_only=False)
    assert saved["hyper_parameters"]["checkpoint"] == "best"
    # The saved weights score the best validation c-index seen, as before this option.
    module.load_state_dict(saved["state_dict"])
    val = data.records["val"]
    score = concordance(risk_of(module, val), np.array([r["time"] for r in val]), np.array([r["event"] for r in val]))
    assert abs(score - float(callback.best_model_score)) < 1e-6


def test_checkpoint_choice_is_checked():
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        FusionModule({"expression": 4}, 0, 2, network={"modalities": ["genomics"]}, checkpoint="middle")


def test_small_cohort_config_names_real_options():
    """Every key the config sets is a field of the config it belongs to (a typo would
    otherwise only fail when LightningCLI parses it)."""
    config = yaml.safe_load((CONFIGS / "experiment" / "small_cohort.yaml").read_text())
    model = config["model"]
    NetworkConfig(**model["network"])
    OptimiserConfig(**model["optimiser"])
    module_args = set(FusionModule.__init__.__code__.co_varnames)
    assert set(model) - {"network", "optimiser", "task"} <= module_args
    assert model["network"]["linear_path"] is True and model["checkpoint"] == "last"
    # No validation part: the fixed training length replaces checkpoint choice.
    assert config["data"]["split"][1] == 0.0
