"""Fusion strategies: how per-modality embeddings (already zero where a modality is
absent) and the presence mask become the output. One config switch,
``model.network.fusion``, picks one; all share the encoders in encoders.py.

Every strategy gives an output for every presence pattern and never divides by a
count of present modalities that could be zero, so the exported graph has no
NaN path. Masks are applied as multipliers or large negative attention biases,
not as boolean indexing, so the graph stays static for ONNX."""

from __future__ import annotations

import itertools

import torch
from torch import nn

FUSIONS = ("late", "gated", "kronecker", "cross_attention")

# Added to attention scores of absent items: softmax gives them ~0 weight, and a
# row with nothing present stays finite (uniform) and is then zeroed by its mask.
_MASKED = -1e4


def _head(width: int, hidden: int, n_outputs: int, dropout: float) -> list[nn.Module]:
    return [nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs)]


class LateFusion(nn.Sequential):
    """Concatenate the masked embeddings and the mask; an MLP reads them.

    A Sequential (its layers directly its children) so checkpoints of the first
    model generation, whose head was this Sequential, still load."""

    needs_tokens = False

    def __init__(self, n_modalities: int, embed_dim: int, n_outputs: int, dropout: float, **_):
        super().__init__(*_head(n_modalities * (embed_dim + 1), embed_dim, n_outputs, dropout))

    def forward(self, embeddings: list[torch.Tensor], presence: torch.Tensor, tokens=None) -> torch.Tensor:
        x = torch.cat([*embeddings, presence], dim=1)
        for layer in self:
            x = layer(x)
        return x


class GatedFusion(nn.Module):
    """Gated attention over modalities (the attention-MIL gate, Ilse et al. 2018,
    applied across modalities): each modality's gate network scores its embedding,
    absent modalities are masked out of a softmax, and the weighted sum of the
    embeddings (with the mask) goes to the head. The weights say how much each
    modality drove a prediction (``gates``)."""

    needs_tokens = False

    def __init__(self, n_modalities: int, embed_dim: int, n_outputs: int, dropout: float, **_):
        super().__init__()
        hidden = max(8, embed_dim // 2)
        self.value = nn.ModuleList(nn.Linear(embed_dim, hidden) for _ in range(n_modalities))
        self.gate = nn.ModuleList(nn.Linear(embed_dim, hidden) for _ in range(n_modalities))
        self.score = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_modalities))
        self.transform = nn.ModuleList(nn.Linear(embed_dim, embed_dim) for _ in range(n_modalities))
        self.head = nn.Sequential(*_head(embed_dim + n_modalities, embed_dim, n_outputs, dropout))

    def gates(self, embeddings: list[torch.Tensor], presence: torch.Tensor) -> torch.Tensor:
        """(batch, modalities) weights: softmax over present modalities, 0 for absent ones."""
        scores = torch.cat(
            [
                s(torch.tanh(v(e)) * torch.sigmoid(g(e)))
                for e, v, g, s in zip(embeddings, self.value, self.gate, self.score, strict=True)
            ],
            dim=1,
        )
        weights = torch.softmax(scores + (1 - presence) * _MASKED, dim=1)
        return weights * presence

    def forward(self, embeddings: list[torch.Tensor], presence: torch.Tensor, tokens=None) -> torch.Tensor:
        weights = self.gates(embeddings, presence)
        fused = sum(w[:, None] * t(e) for w, t, e in zip(weights.unbind(1), self.transform, embeddings, strict=True))
        return self.head(torch.cat([fused, presence], dim=1))


class KroneckerFusion(nn.Module):
    """Bilinear (Kronecker) fusion with an appended constant, the Pathomic Fusion
    idea: each embedding is reduced to ``rank`` dims, masked, and extended with a 1,
    so the outer product [h_a, 1] x [h_b, 1] holds the bilinear terms h_a h_b^T and
    both unimodal terms h_a, h_b (and a constant). A missing modality leaves its
    partner's unimodal terms intact.

    With more than two modalities the full product grows as (rank+1)^M; this takes
    the products of every PAIR of used modalities instead (M(M-1)/2 blocks of
    (rank+1)^2) and concatenates them: every pairwise interaction, linear cost in
    the number of pairs."""

    needs_tokens = False

    def __init__(
        self, n_modalities: int, embed_dim: int, n_outputs: int, dropout: float, rank: int = 8, used=None, **_
    ):
        super().__init__()
        self.used = [i for i in range(n_modalities) if used is None or used[i]]
        self.reduce = nn.ModuleList(nn.Linear(embed_dim, rank) for _ in range(n_modalities))
        self.pairs = list(itertools.combinations(self.used, 2)) or [(self.used[0], self.used[0])]
        width = len(self.pairs) * (rank + 1) ** 2 + n_modalities
        self.head = nn.Sequential(*_head(width, embed_dim, n_outputs, dropout))

    def forward(self, embeddings: list[torch.Tensor], presence: torch.Tensor, tokens=None) -> torch.Tensor:
        ones = presence.new_ones(presence.shape[0], 1)
        z = {
            # tanh, not ReLU: with ReLU the image's reduction died on the demo cohort
            # (all units <= 0 for every case), leaving the model blind to the image.
            i: torch.cat([torch.tanh(self.reduce[i](embeddings[i])) * presence[:, i : i + 1], ones], dim=1)
            for i in self.used
        }
        products = [torch.einsum("bi,bj->bij", z[a], z[b]).flatten(1) for a, b in self.pairs]
        return self.head(torch.cat([*products, presence], dim=1))


class CrossAttentionFusion(nn.Module):
    """Genomics-guided co-attention over image tokens (the MCAT idea): each omics
    block's embedding is a query over the image encoder's feature tokens, so a
    genomic profile picks the image regions that matter for it. Absent image:
    every token is masked and the attended vector is zeroed; absent block: its
    attended vector is zeroed. The head reads the pooled embeddings, the attended
    vectors and the mask, so every presence pattern still predicts."""

    needs_tokens = True

    def __init__(
        self, n_modalities: int, embed_dim: int, n_outputs: int, dropout: float, queries=(), heads: int = 4, **_
    ):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by {heads} attention heads")
        self.queries = list(queries)  # modality indices of the omics blocks the model uses
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(embed_dim, embed_dim) for _ in range(4))
        self.norm = nn.LayerNorm(embed_dim)
        width = n_modalities * (embed_dim + 1) + len(self.queries) * embed_dim
        self.head = nn.Sequential(*_head(width, embed_dim, n_outputs, dropout))

    def attention(self, query: torch.Tensor, tokens: torch.Tensor, image_present: torch.Tensor) -> torch.Tensor:
        """(batch, heads, tokens) attention weights of one query over the image tokens."""
        b, n, e = tokens.shape
        d = e // self.heads
        q = self.q(query).reshape(b, self.heads, 1, d)
        k = self.k(tokens).reshape(b, n, self.heads, d).transpose(1, 2)
        scores = (q @ k.transpose(2, 3)).squeeze(2) / d**0.5  # (b, heads, n)
        return torch.softmax(scores + (1 - image_present)[:, None, None] * _MASKED, dim=-1)

    def forward(
        self, embeddings: list[torch.Tensor], presence: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        attended = []
        if self.queries:
            image_present = presence[:, 0]
            tokens = self.norm(tokens)
            b, n, e = tokens.shape
            v = self.v(tokens).reshape(b, n, self.heads, e // self.heads).transpose(1, 2)  # (b, h, n, d)
            for i in self.queries:
                weights = self.attention(embeddings[i], tokens, image_present)
                out = (weights.unsqueeze(2) @ v).reshape(b, e)
                attended.append(self.o(out) * (image_present * presence[:, i])[:, None])
        return self.head(torch.cat([*embeddings, *attended, presence], dim=1))


def build_fusion(
    kind: str,
    modality_names: list[str],
    used: list[bool],
    omics_names: list[str],
    embed_dim: int,
    n_outputs: int,
    dropout: float,
    kronecker_rank: int = 8,
) -> nn.Module:
    n = len(modality_names)
    if kind == "late":
        return LateFusion(n, embed_dim, n_outputs, dropout)
    if kind == "gated":
        return GatedFusion(n, embed_dim, n_outputs, dropout)
    if kind == "kronecker":
        return KroneckerFusion(n, embed_dim, n_outputs, dropout, rank=kronecker_rank, used=used)
    if kind == "cross_attention":
        # Queries only when there are image tokens to attend to.
        queries = [i for i, m in enumerate(modality_names) if m in omics_names and used[i]] if used[0] else []
        return CrossAttentionFusion(n, embed_dim, n_outputs, dropout, queries=queries)
    raise ValueError(f"unknown fusion {kind!r}; choose from {FUSIONS}")
