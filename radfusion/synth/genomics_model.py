"""Expression and mutation simulation with known structure.

Expression is log2(TPM+1)-like and has the structure real panels have, so that a
model must actually find the signal rather than read it off one column:

* ~10 co-expression modules, each driven by a latent factor; most genes load on
  one module, the rest are independent.
* The latent subtype (S1/S2/S3) shifts a few modules (modules 0-4), which gives
  the table visible cluster structure unrelated to the outcome.
* Twelve DRIVER genes carry the genomic score: a co-regulated "driver program"
  (a pathway whose activity drives response), each gene loading strongly (0.85)
  on it with the sign of its weight (a negative loading is a repressed gene),
  plus its own noise. Like a real pathway signature, the signal is spread over a
  group of correlated genes, which is what lets a regularised model trained on a
  few hundred patients find it among hundreds of genes. No subtype shifts that
  module and no other gene loads on it, so the score stays N(0, 1), independent
  of subtype.

The genomic score is computed from the *written* (rounded) driver values, so it
is exactly recoverable from genomics.csv: the only thing a perfect genomic model
lacks is the image score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radfusion.synth.gene_symbols import gene_panel

N_MODULES = 10
N_DRIVERS = 12
DRIVER_LOADING = 0.85
DRIVER_MODULE = N_MODULES - 1
SUBTYPES = ("S1", "S2", "S3")
SUBTYPE_PROBS = (0.40, 0.35, 0.25)
# Module mean shift per subtype (rows: S1, S2, S3; columns: modules). Only
# modules 0-4 move, so the driver program (the last module) does not track subtype.
SUBTYPE_SHIFTS = np.zeros((3, N_MODULES))
SUBTYPE_SHIFTS[0, [0, 1]] = [1.4, -1.0]
SUBTYPE_SHIFTS[1, [2, 3]] = [1.4, 1.0]
SUBTYPE_SHIFTS[2, [4, 0]] = [1.4, -1.0]

MUTATION_GENES = ("TP53", "KRAS", "EGFR", "PIK3CA", "BRAF")
MUTATION_PREVALENCE = {"TP53": 0.40, "KRAS": 0.20, "EGFR": 0.25, "PIK3CA": 0.15, "BRAF": 0.08}

EXPRESSION_DECIMALS = 4


@dataclass(frozen=True)
class PanelModel:
    """Per-gene parameters of the expression model; fixed by the cohort seed."""

    genes: list[str]
    means: np.ndarray  # baseline log2(TPM+1) per gene
    scales: np.ndarray  # per-gene spread
    module_of: np.ndarray  # module index per gene, -1 for none
    loadings: np.ndarray  # signed loading on that module (0 for none)
    driver_idx: np.ndarray  # column indices of the driver genes
    driver_weights: np.ndarray  # mixed-sign weights, same order as driver_idx
    driver_norm: float  # sd of the weighted sum, so the score is N(0, 1)

    @property
    def driver_genes(self) -> list[str]:
        return [self.genes[i] for i in self.driver_idx]


def build_panel_model(n_genes: int, rng: np.random.Generator) -> PanelModel:
    """Draw gene baselines, module memberships and the drivers with their weights."""
    if n_genes < 2 * N_DRIVERS:
        raise ValueError(f"n_genes must be at least {2 * N_DRIVERS}")
    genes = gene_panel(n_genes)
    means = rng.uniform(1.5, 9.0, n_genes)
    scales = rng.uniform(0.4, 1.4, n_genes)
    in_module = rng.random(n_genes) < 0.65
    module_of = np.where(in_module, rng.integers(0, DRIVER_MODULE, n_genes), -1)
    loadings = np.where(in_module, rng.uniform(0.45, 0.85, n_genes), 0.0)

    driver_idx = np.sort(rng.choice(n_genes, N_DRIVERS, replace=False))
    signs = rng.permutation(np.repeat([1.0, -1.0], N_DRIVERS // 2))
    weights = np.round(signs * rng.uniform(0.7, 1.2, N_DRIVERS), 3)
    # Drivers: well expressed (no clipping at 0), on the driver program with
    # the sign of their weight (a negative loading is a repressed gene).
    means[driver_idx] = rng.uniform(4.5, 8.0, N_DRIVERS)
    scales[driver_idx] = rng.uniform(0.8, 1.2, N_DRIVERS)
    module_of[driver_idx] = DRIVER_MODULE
    loadings[driver_idx] = signs * DRIVER_LOADING

    # Correlation of the standardized drivers through the shared program; the
    # normaliser must account for it to make the score unit-variance.
    corr = np.outer(signs, signs) * DRIVER_LOADING**2
    np.fill_diagonal(corr, 1.0)
    norm = float(np.sqrt(weights @ corr @ weights))
    return PanelModel(genes, means, scales, module_of, loadings, driver_idx, weights, norm)


def round_like_text(values: np.ndarray, decimals: int) -> np.ndarray:
    """Round to exactly the doubles that the written decimal text parses back to.

    np.round can differ from the decimal text by one ulp; formatting and parsing
    guarantees the CSV and the Parquet copy hold the same numbers.
    """
    text = np.char.mod(f"%.{decimals}f", values)
    return text.astype(np.float64).reshape(values.shape)


def simulate_expression(model: PanelModel, subtype_codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Expression matrix (patients x genes), rounded as it will be written."""
    n, g = len(subtype_codes), len(model.genes)
    factors = rng.standard_normal((n, N_MODULES)) + SUBTYPE_SHIFTS[subtype_codes]
    own = rng.standard_normal((n, g))
    shared = np.where(model.module_of >= 0, factors[:, np.maximum(model.module_of, 0)], 0.0)
    z = model.loadings * shared + np.sqrt(1.0 - model.loadings**2) * own
    expr = np.clip(model.means + model.scales * z, 0.0, None)
    return round_like_text(expr, EXPRESSION_DECIMALS)


def genomic_score(model: PanelModel, expression: np.ndarray) -> np.ndarray:
    """z_gen: the normalised weighted sum of the standardized driver genes."""
    idx = model.driver_idx
    z = (expression[:, idx] - model.means[idx]) / model.scales[idx]
    return z @ model.driver_weights / model.driver_norm


def simulate_mutations(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """0/1 flags with the target prevalences; KRAS, EGFR and BRAF mutually exclusive.

    Exclusivity mirrors lung adenocarcinoma. Conditional probabilities are set so
    the marginal prevalences still match MUTATION_PREVALENCE.
    """
    p = MUTATION_PREVALENCE
    u = rng.random((n, 5))
    egfr = u[:, 0] < p["EGFR"]
    kras = ~egfr & (u[:, 1] < p["KRAS"] / (1 - p["EGFR"]))
    p_neither = (1 - p["EGFR"]) * (1 - p["KRAS"] / (1 - p["EGFR"]))
    braf = ~egfr & ~kras & (u[:, 2] < p["BRAF"] / p_neither)
    tp53 = u[:, 3] < p["TP53"]
    pik3ca = u[:, 4] < p["PIK3CA"]
    flags = {"TP53": tp53, "KRAS": kras, "EGFR": egfr, "PIK3CA": pik3ca, "BRAF": braf}
    return {gene: flags[gene].astype(np.int64) for gene in MUTATION_GENES}
