"""Label co-occurrence graph (ML-GCN, Chen et al. 2019) and the GCN that turns label nodes into classifiers.

The graph is built once from train co-occurrence counts (:func:`build_adjacency`, in the paper's direction or as
ML-GCN's code builds it); :class:`LabelGCN` runs a ``torch_geometric`` GCNConv stack over label-node features
(learned, or fixed: :func:`ppmi_embeddings` or a file) and returns one classifier vector per class, (K, C).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor, nn

ADJACENCIES = ("paper", "reference")


def build_adjacency(cooccurrence: np.ndarray, tau: float, p: float, kind: str = "paper") -> Tensor:
    """Label-graph adjacency from co-occurrence counts; row i holds the weights node i aggregates with (H' = Â H).

    Both kinds start from the conditional probabilities P(j|i) = C[i, j] / C[i, i] (row i is 0 where C[i, i] == 0)
    binarised off the diagonal, B[i, j] = 1 if P(j|i) >= tau (i != j).

    ``"paper"`` (TRCGL-Net's and ML-GCN's equations): node i aggregates the classes j that i implies.
      Row i's neighbours share weight p equally, A[i, j] = p / sum_j' B[i, j'], with self-loop A[i, i] = 1 - p (1.0
      for a row without neighbours); then Â = D^-1/2 A D^-1/2 with D the row sums of A (all 1, so Â = A; kept so the
      result is normalised by construction). A tail class that implies a head class borrows the head's node.

    ``"reference"`` (ML-GCN's code, ``gen_A`` then ``gen_adj``): the re-weighting is per column,
      A[i, j] = p * B[i, j] / (sum_i' B[i', j] + 1e-6), the self-loop is 1 for every node (not 1 - p), and the result
      is D^-1/2 A^T D^-1/2 with D the row sums of A. The transpose makes node i aggregate the classes j that imply i
      (P(i|j) >= tau): the opposite direction of the paper's equation, so the two kinds give different graphs.

    Args:
        cooccurrence: (K, K) train co-occurrence counts, diagonal = per-class positive counts.
        tau: binarisation threshold on P(j|i) (config key ``model.gcn_tau``).
        p: neighbour weight (config key ``model.gcn_p``), in [0, 1].
        kind: ``"paper"`` or ``"reference"`` (config key ``model.gcn_adjacency``).

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
    if kind not in ADJACENCIES:
        raise ValueError(f"config key 'model.gcn_adjacency' must be one of {list(ADJACENCIES)}, got {kind!r}")
    k = counts.shape[0]
    diag = np.diag(counts)  # (K,)
    cond = np.divide(counts, diag[:, None], out=np.zeros_like(counts), where=diag[:, None] > 0)  # (K, K) P(j|i)
    off_diagonal = ~np.eye(k, dtype=bool)
    binary = (cond >= tau) & off_diagonal  # (K, K)
    if kind == "reference":
        adj = p * binary / (binary.sum(axis=0, keepdims=True) + 1e-6) + np.eye(k)  # (K, K) column re-weighting
        d_inv_sqrt = 1.0 / np.sqrt(adj.sum(axis=1))  # (K,) row sums >= 1
        normalised = d_inv_sqrt[:, None] * adj.T * d_inv_sqrt[None, :]  # (K, K) (A D)^T D = D A^T D
        return torch.from_numpy(normalised.astype(np.float32))
    degree = binary.sum(axis=1, keepdims=True)  # (K, 1) neighbours per row
    adj = np.where(binary, p / np.maximum(degree, 1), 0.0)  # (K, K)
    adj[np.diag_indices(k)] = np.where(degree[:, 0] > 0, 1.0 - p, 1.0)
    d_inv_sqrt = 1.0 / np.sqrt(adj.sum(axis=1))  # (K,) every row sum is 1 (> 0)
    normalised = d_inv_sqrt[:, None] * adj * d_inv_sqrt[None, :]  # (K, K) D^-1/2 A D^-1/2
    return torch.from_numpy(normalised.astype(np.float32))


def ppmi_embeddings(cooccurrence: np.ndarray, num_images: int, dim: int) -> Tensor:
    """Fixed label-node features from the train labels alone: an SVD of their PPMI matrix (offline word vectors).

    PMI(i, j) = log(P(i, j) / (P(i) P(j))) with P(i, j) = C[i, j] / N and P(i) = C[i, i] / N; PPMI = max(PMI, 0),
    0 where C[i, j] = 0. The diagonal is kept (PMI(i, i) = -log P(i) > 0): without it a class that co-occurs with no
    other above chance would get an all-zero row, hence a zero feature, and a bias-free GCN a zero classifier. With
    PPMI = U S V^T, the features are the rows of U_d S_d^(1/2) (d = min(dim, K) leading components), scaled to unit
    norm (rows that are all zero stay zero). SVD signs are fixed so that each component's largest-magnitude entry of
    U is positive, which makes the result deterministic.

    Args:
        cooccurrence: (K, K) train co-occurrence counts, diagonal = per-class positive counts.
        num_images: N, the number of train images the counts come from.
        dim: D, the feature size wanted (at most K is returned).

    Returns:
        (K, min(dim, K)) float32 features.
    """
    counts = np.asarray(cooccurrence, dtype=np.float64)
    if num_images < 1:
        raise ValueError(f"PPMI label features need the number of train images, got {num_images}")
    k = counts.shape[0]
    prevalence = np.diag(counts) / num_images  # (K,)
    joint = counts / num_images  # (K, K)
    expected = prevalence[:, None] * prevalence[None, :]  # (K, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(joint / expected)  # (K, K), -inf / nan where a count is 0
    ppmi = np.where((counts > 0) & (expected > 0), np.maximum(pmi, 0.0), 0.0)  # (K, K)
    u, s, _ = np.linalg.svd(ppmi)  # (K, K), (K,)
    d = min(dim, k)
    u = u[:, :d]
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(d)])  # (d,)
    features = u * signs[None, :] * np.sqrt(s[:d])[None, :]  # (K, d)
    norms = np.linalg.norm(features, axis=1, keepdims=True)  # (K, 1)
    features = np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
    return torch.from_numpy(features.astype(np.float32))


class LabelGCN(nn.Module):
    """GCNConv stack over label nodes producing one classifier vector per class.

    Node features are learned embeddings (K, D) (init N(0, 1/D)), or fixed ones (a buffer) when ``embeddings`` is
    given. Layers map D → hidden → ... → hidden → out_dim with LeakyReLU(0.2) between them (not after the last), as
    in ML-GCN. The dense adjacency Â becomes a weighted edge list with an edge j → i of weight Â[i, j], so that each
    layer computes H' = Â H Θ (+ b with ``bias``) exactly; ``normalize=False`` and ``add_self_loops=False`` because Â
    is already normalised and carries its own self-loops.

    Args:
        adjacency: (K, K) from :func:`build_adjacency`.
        out_dim: C, the feature dimension the classifiers apply to.
        hidden: width of the hidden layers.
        layers: number of GCNConv layers (>= 1).
        embedding_dim: D for learned embeddings (ignored when ``embeddings`` is given).
        embeddings: optional fixed (K, D) node features, e.g. class-name word embeddings.
        bias: bias terms in the layers (ML-GCN's reference layers have none).
    """

    def __init__(
        self,
        adjacency: Tensor,
        out_dim: int,
        hidden: int,
        layers: int,
        embedding_dim: int,
        embeddings: Tensor | None = None,
        bias: bool = True,
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
            GCNConv(d_in, d_out, normalize=False, add_self_loops=False, bias=bias)
            for d_in, d_out in itertools.pairwise(dims)
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
