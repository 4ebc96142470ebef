"""The federation's parts that need no Flower: the job as Flower's run config carries
it, the clipping and noise of client-side privacy, and the data module preprocessing
with a policy agreed elsewhere (a site whose panel lacks genes; a server with no data)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from radfusion.genomics import feature_columns, load_genomics_table, split_blocks
from radfusion.pooled_policy import policy_document, pool_policy, site_moments
from radfusion.training.data import RadfusionDataModule
from radfusion.training.federated.job import FederatedJob
from radfusion.training.federated.privacy import privatise
from tests.support.tiny import TINY_TARGET_SHAPE, TINY_TARGET_SPACING


def test_the_job_travels_as_flat_scalars_and_back():
    job = FederatedJob(
        configs=("data:\n  batch_size: 4\n", "model: {}\n"), out="/srv/run", rounds=5, strategy="fedprox"
    )
    config = job.run_config()
    assert all(isinstance(v, str | int | float | bool) for v in config.values())
    assert FederatedJob.from_run_config(config) == job
    assert job.cli_configs() == ["--config", job.configs[0], "--config", job.configs[1]]
    with pytest.raises(ValueError, match="strategy"):
        FederatedJob(configs=(), out="x", strategy="fedsgd")
    with pytest.raises(ValueError, match="dp"):
        FederatedJob(configs=(), out="x", dp_noise=-1)
    # With two sites each could subtract its own update from the sum SecAgg+ reveals.
    with pytest.raises(ValueError, match="SecAgg\\+ needs at least 3 sites"):
        FederatedJob(configs=(), out="x", min_sites=2)
    assert not FederatedJob(configs=(), out="x", min_sites=2, secagg=False).secagg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_privatise_clips_the_update_and_adds_noise_of_the_stated_scale(seed):
    rng = np.random.default_rng(seed)
    old = [rng.normal(size=(200, 50)).astype(np.float32), rng.normal(size=300).astype(np.float32)]
    new = [o + rng.normal(scale=0.5, size=o.shape).astype(np.float32) for o in old]
    clipped, norm = privatise(new, old, clip=1.0, noise=0.0, rng=rng)
    update = np.concatenate([(c - o).ravel() for c, o in zip(clipped, old, strict=True)])
    assert norm > 10 and np.linalg.norm(update) == pytest.approx(1.0, rel=1e-4)
    assert all(c.dtype == np.float32 for c in clipped)
    noised, _ = privatise(old, old, clip=2.0, noise=0.5, rng=rng)  # no update: noise only
    residual = np.concatenate([(n - o).ravel() for n, o in zip(noised, old, strict=True)])
    # 10,300 draws of N(0, 1): the sample std lies within 3% of 1 with room to spare.
    assert residual.std() == pytest.approx(0.5 * 2.0, rel=0.03)


def _policy_with_extra_gene(cohort) -> tuple[dict, str]:
    genomics = load_genomics_table(cohort / "genomics.parquet")
    blocks = split_blocks(feature_columns(genomics))
    moments = site_moments(genomics, blocks, [], [], None)
    # Another site's panel has a gene this cohort lacks.
    other = pd.DataFrame({"ZZZ9": np.arange(8.0)}, index=[f"other-{i}" for i in range(8)])
    first_block = next(iter(blocks))
    extra = site_moments(other, {first_block: ["ZZZ9"]}, [], [], None)
    return policy_document(pool_policy([moments, extra])), first_block


def _datamodule(cohort_dir: str, policy) -> RadfusionDataModule:
    return RadfusionDataModule(
        cohort_dir=cohort_dir,
        target_shape=TINY_TARGET_SHAPE,
        target_spacing=TINY_TARGET_SPACING,
        split=(0.6, 0.2, 0.2),
        batch_size=4,
        cache="none",
        policy=policy,
    )


def test_a_site_preprocesses_with_the_pooled_policy_its_table_lacks_genes_of(tiny_cohort, tmp_path):
    document, block = _policy_with_extra_gene(tiny_cohort)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    dm = _datamodule(str(tiny_cohort), str(path))
    assert "ZZZ9" in dm.block_features[block]
    widths = sum(len(b["features"]) for b in document["omics"])
    dm.setup()
    assert [b.features for b in dm.omics] == [b["features"] for b in document["omics"]]
    for record in dm.records["train"] + dm.records["test"]:
        assert record["genomics"].shape == (widths,) and np.isfinite(record["genomics"]).all()
    # The same document given inline (as a checkpoint keeps it) gives the same data module.
    assert _datamodule(str(tiny_cohort), document).block_features == dm.block_features


def test_a_server_shapes_the_model_from_the_policy_without_data(tiny_cohort):
    document, _ = _policy_with_extra_gene(tiny_cohort)
    dm = _datamodule("", document)
    assert dm.omics_sizes == {b["name"]: len(b["features"]) for b in document["omics"]}
    assert dm.n_clinical == 0 and dm.modalities[0] == "image"
