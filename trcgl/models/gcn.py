"""Label co-occurrence graph (ML-GCN, Chen et al. 2019) and the GCN that turns label nodes into classifiers.

The graph is built once from train co-occurrence counts (:func:`build_adjacency`); :class:`LabelGCN` runs a
``torch_geometric`` GCNConv stack over label-node embeddings and returns one classifier vector per class, (K, C).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor, nn


def build_adjacency(cooccurrence: np.ndarray, tau: float, p: float) -> Tensor:
    """ML-GCN adjacency from label co-occurrence counts.

    1. Conditional probabilities P(j|i) = C[i, j] / C[i, i] (row i is 0 where C[i, i] == 0).
    2. Binarise off the diagonal: A[i, j] = 1 if P(j|i) >= tau (i != j), else 0.
    3. Re-weight (row-wise, as the paper's equation): row i's neighbours share weight p equally,
       A'[i, j] = p / sum_{j' != i} A[i, j']; the self-loop is A'[i, i] = 1 - p, or 1.0 for a row without neighbours.
    4. Normalise: Â = D^-1/2 A' D^-1/2 with D = diag(row sums of A'). ML-GCN's ``gen_adj`` uses the same degree but
       returns the transpose, D^-1/2 A'^T D^-1/2, because its re-weighting is column-wise; ours is row-wise, so we do
       not transpose: row i of Â holds the weights with which node i aggregates its neighbours (H' = Â H).
       Every row of A' sums to 1, so D = I and this step leaves A' unchanged; it is kept so the result is the
       normalised adjacency by construction, whatever the re-weighting.

    Args:
        cooccurrence: (K, K) train co-occurrence counts, diagonal = per-class positive counts.
        tau: binarisation threshold on P(j|i) (config key ``model.gcn_tau``).
        p: neighbour weight (config key ``model.gcn_p``), in [0, 1].

    Returns:
        (K, K) float32 adjacency Â.
    """
    counts = np.asarray(cooccurrence, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"co-occurrence matrix must be square (K, K), got shape {counts.shape}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"config key 'model.gcn_p' must be in [0, 1], got {p}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"config key 'model.gcn_tau' must be in [0, 1], got {tau}")
    k = counts.shape[0]
    diag = np.diag(counts)  # (K,)
    cond = np.divide(counts, diag[:, None], out=np.zeros_like(counts), where=diag[:, None] > 0)  # (K, K) P(j|i)
    off_diagonal = ~np.eye(k, dtype=bool)
    binary = (cond >= tau) & off_diagonal  # (K, K)
    degree = binary.sum(axis=1, keepdims=True)  # (K, 1) neighbours per row
    adj = np.where(binary, p / np.maximum(degree, 1), 0.0)  # (K, K)
    adj[np.diag_indices(k)] = np.where(degree[:, 0] > 0, 1.0 - p, 1.0)
    d_inv_sqrt = 1.0 / np.sqrt(adj.sum(axis=1))  # (K,) every row sum is 1 (> 0)
    normalised = d_inv_sqrt[:, None] * adj * d_inv_sqrt[None, :]  # (K, K) D^-1/2 A D^-1/2
    return torch.from_numpy(normalised.astype(np.float32))


class LabelGCN(nn.Module):
    """GCNConv stack over label nodes producing one classifier vector per class.

    Node features are learned embeddings (K, D) (init N(0, 1/D)), or fixed ones (a buffer) when ``embeddings`` is
    given. Layers map D → hidden → ... → hidden → out_dim with LeakyReLU(0.2) between them (not after the last), as
    in ML-GCN. The dense adjacency Â becomes a weighted edge list with an edge j → i of weight Â[i, j], so that each
    layer computes H' = Â H Θ + b exactly; ``normalize=False`` and ``add_self_loops=False`` because Â is already
    normalised and carries its own self-loops.

    Args:
        adjacency: (K, K) from :func:`build_adjacency`.
        out_dim: C, the feature dimension the classifiers apply to.
        hidden: width of the hidden layers.
        layers: number of GCNConv layers (>= 1).
        embedding_dim: D for learned embeddings (ignored when ``embeddings`` is given).
        embeddings: optional fixed (K, D) node features, e.g. class-name word embeddings.
    """

    def __init__(
        self,
        adjacency: Tensor,
        out_dim: int,
        hidden: int,
        layers: int,
        embedding_dim: int,
        embeddings: Tensor | None = None,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"config key 'model.gcn_layers' must be >= 1, got {layers}")
        num_classes = adjacency.shape[0]
        if embeddings is None:
            # rows of norm ~1, so the initial classifiers have the scale of a linear layer's
            self.embeddings = nn.Parameter(torch.randn(num_classes, embedding_dim) * embedding_dim**-0.5)  # (K, D)
        else:
            if embeddings.ndim != 2 or embeddings.shape[0] != num_classes:
                raise ValueError(
                    f"label embeddings (config key 'model.label_embedding') must be ({num_classes}, D), "
                    f"got {tuple(embeddings.shape)}"
                )
            self.register_buffer("embeddings", embeddings.float())  # (K, D)
        # imported here, not at module level: torch_geometric's package import loads its dataset and LLM helpers in
        # every process that loads trcgl.models (Ray Train workers, predictor actors), and only GCN models need it
        from torch_geometric.nn import GCNConv
        from torch_geometric.utils import dense_to_sparse

        edge_index, edge_weight = dense_to_sparse(adjacency)  # (2, E) rows = (i, j), (E,) = Â[i, j]
        self.register_buffer("edge_index", edge_index.flip(0), persistent=False)  # (2, E) source j → target i
        self.register_buffer("edge_weight", edge_weight, persistent=False)  # (E,)
        dims = [self.embeddings.shape[1]] + [hidden] * (layers - 1) + [out_dim]
        self.convs = nn.ModuleList(
            GCNConv(d_in, d_out, normalize=False, add_self_loops=False) for d_in, d_out in itertools.pairwise(dims)
        )
        self.act = nn.LeakyReLU(0.2)

    def forward(self) -> Tensor:
        """Returns the classifier weights W, (K, out_dim)."""
        h = self.embeddings  # (K, D)
        for i, conv in enumerate(self.convs):
            h = conv(h, self.edge_index, self.edge_weight)  # (K, d_out)
            if i < len(self.convs) - 1:
                h = self.act(h)
        return h  # (K, C)
