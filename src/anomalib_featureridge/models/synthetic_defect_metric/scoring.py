"""Scores from the distance of a test embedding to the good training embeddings, in exportable torch.

Both scorers work on L2-normalised embeddings stored in :class:`EmbeddingBank`:

* ``cosine``: ``1 - max_i cos(e, b_i)``, the distance to the nearest good image;
* ``lof``: the local outlier factor (Breunig et al., 2000) of ``e`` among the good embeddings,
  as scikit-learn's ``LocalOutlierFactor(novelty=True)`` computes it (Euclidean distances,
  ``1e-10`` added to the reachability distance): about 1 inside the good cloud, larger outside.
  What only depends on the good embeddings (each one's k-distance and local reachability
  density) is computed once in :meth:`EmbeddingBank.fit`, so a query is one matrix product and
  one ``topk``: both export to ONNX and OpenVINO.

The bank holds ``N x D`` floats plus two per embedding for LOF (``N`` training images, ``D``
embedding channels, e.g. 320 for mobilenetv2_100: 1.3 kB per image); ``max_embeddings`` caps ``N``
with a seeded random subset.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_featureridge.components.export import is_exporting

SCORERS = ("cosine", "lof")
LOF_EPS = 1e-10


def euclidean_distances(queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """``(Q, N)`` Euclidean distances, as a matrix product (no ``cdist``, which does not export everywhere)."""
    squared = queries.pow(2).sum(1, keepdim=True) + references.pow(2).sum(1)[None] - 2 * queries @ references.T
    return squared.clamp_min(0.0).sqrt()


class EmbeddingBank(nn.Module):
    """The good training embeddings and their LOF statistics; buffers that take the checkpoint's size on load."""

    def __init__(self, dim: int, n_neighbors: int = 20) -> None:
        super().__init__()
        self.n_neighbors = n_neighbors
        self.register_buffer("embeddings", torch.zeros(0, dim))
        self.register_buffer("k_distance", torch.zeros(0))
        self.register_buffer("density", torch.zeros(0))
        self.embeddings: torch.Tensor
        self.k_distance: torch.Tensor
        self.density: torch.Tensor

    @property
    def is_empty(self) -> bool:
        """No embeddings yet: the model has not been trained."""
        return self.embeddings.shape[0] == 0

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor, max_embeddings: int | None = None, seed: int = 0) -> None:
        """Store normalised ``embeddings`` (a seeded random ``max_embeddings`` of them) and their LOF statistics."""
        if max_embeddings is not None and embeddings.shape[0] > max_embeddings:
            generator = torch.Generator().manual_seed(seed)
            keep = torch.randperm(embeddings.shape[0], generator=generator)[:max_embeddings].sort().values
            embeddings = embeddings[keep.to(embeddings.device)]
        bank = F.normalize(embeddings.float(), dim=1)
        self.embeddings = bank
        self.k_distance = bank.new_zeros(0)
        self.density = bank.new_zeros(0)
        if self.n_neighbors >= bank.shape[0]:
            return  # too few for LOF: only the cosine scorer can be used (lof_score says so)
        distances = euclidean_distances(bank, bank)
        distances.fill_diagonal_(float("inf"))  # a point is not its own neighbour (scikit-learn drops it too)
        neighbour_distances, neighbours = distances.topk(self.n_neighbors, dim=1, largest=False)
        self.k_distance = neighbour_distances[:, -1]
        reach = torch.maximum(neighbour_distances, self.k_distance[neighbours])
        self.density = 1.0 / (reach.mean(dim=1) + LOF_EPS)

    def cosine_score(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``1 - max cos`` to the good embeddings, ``(B,)``."""
        return 1.0 - (F.normalize(embeddings, dim=1) @ self.embeddings.T).amax(dim=1)

    def lof_score(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Local outlier factor among the good embeddings, ``(B,)``."""
        if not is_exporting() and self.density.shape[0] == 0:
            check_neighbours(self.n_neighbors, self.embeddings.shape[0])
        distances = euclidean_distances(F.normalize(embeddings, dim=1), self.embeddings)
        neighbour_distances, neighbours = distances.topk(self.n_neighbors, dim=1, largest=False)
        reach = torch.maximum(neighbour_distances, self.k_distance[neighbours])
        density = 1.0 / (reach.mean(dim=1) + LOF_EPS)
        return self.density[neighbours].mean(dim=1) / density

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Take the saved number of embeddings (the buffers are empty before training)."""
        for name in ("embeddings", "k_distance", "density"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def check_neighbours(n_neighbors: int, n_embeddings: int) -> None:
    """LOF needs more good embeddings than neighbours (each point's neighbours exclude itself)."""
    if n_neighbors < 1:
        msg = f"n_neighbors must be at least 1, got {n_neighbors}."
        raise ValueError(msg)
    if n_neighbors >= n_embeddings:
        msg = (
            f"n_neighbors={n_neighbors} needs at least {n_neighbors + 1} good training embeddings, but there are "
            f"{n_embeddings} (training images, or max_embeddings). Lower --model.n_neighbors or add images."
        )
        raise ValueError(msg)
