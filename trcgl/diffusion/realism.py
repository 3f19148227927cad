"""Realism of synthetic images as a two-sample test: can a small classifier tell them from real images? (no Ray)

A logistic regression learns "synthetic or real" from features that see both content and texture: the image
average-pooled to at most 16 x 16 pixels (content and intensity), the log radial power spectrum in 16 bins (blur,
noise and grid artefacts live in its high-frequency bins) and the log standard deviation of the 4-neighbour
Laplacian (sharpness). Features are standardized inside each training fold. Its AUROC on held-out images, from
stratified k-fold out-of-fold predictions, is the realism figure: 0.5 means the two sets are indistinguishable to it,
1.0 that every synthetic image is recognised. The ratio of the mean Laplacian standard deviation, synthetic over real,
says which way sharpness differs (well below 1 for images upsampled from a smaller generator).

A low AUROC is evidence of realism only as strong as this classifier: it is a floor on how distinguishable the sets
are, not a proof that no model can tell them apart.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

POOLED_SIDE = 16  # content features: the image average-pooled to at most this side
SPECTRUM_BINS = 16  # texture features: radial power spectrum bins from 0 to the Nyquist frequency
REGULARIZATION_C = 0.01  # logistic regression's inverse L2 strength: a few hundred images, ~270 features
EPS = 1e-12


@dataclass(frozen=True)
class RealismResult:
    """The two-sample realism test's figures.

    Attributes:
        auroc: out-of-fold AUROC of "synthetic" against "real" (0.5: indistinguishable); None when either set has
            fewer than 2 images.
        laplacian_std_ratio: mean Laplacian standard deviation of the synthetic images over that of the real ones
            (1: as sharp; below 1: blurrier); None when either set is empty or the real images are flat.
        n_synthetic: synthetic images tested.
        n_real: real images tested.
        folds: cross-validation folds used (0 when the AUROC was not computed).
    """

    auroc: float | None
    laplacian_std_ratio: float | None
    n_synthetic: int
    n_real: int
    folds: int

    def to_dict(self) -> dict:
        return asdict(self)


def laplacian_std(images: np.ndarray) -> np.ndarray:
    """Standard deviation of the 4-neighbour Laplacian over each image's interior.

    Args:
        images: (M, S, S) float images, S >= 3.

    Returns:
        (M,) float64.
    """
    x = np.asarray(images, dtype=np.float64)
    lap = 4.0 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]  # (M, S-2, S-2)
    return lap.reshape(len(x), -1).std(axis=1)


def radial_spectrum(images: np.ndarray, bins: int = SPECTRUM_BINS) -> np.ndarray:
    """Log10 mean power in radial frequency bins from 0 (DC excluded) to Nyquist; corners beyond it are dropped.

    Args:
        images: (M, S, S) float images.
        bins: number of bins.

    Returns:
        (M, bins) float64.
    """
    x = np.asarray(images, dtype=np.float64)
    m, side, _ = x.shape
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(x)) ** 2 / side**2  # (M, S, S)
    f = np.fft.fftfreq(side)  # cycles per pixel, in [-0.5, 0.5)
    radius = np.hypot(f[:, None], f[None, :])  # (S, S)
    index = np.floor(radius / 0.5 * bins).astype(np.int64)  # (S, S): bin of each frequency
    index[0, 0] = -1  # DC: the mean, already removed
    out = np.empty((m, bins))
    flat = power.reshape(m, -1)  # (M, S*S)
    for b in range(bins):
        sel = (index == b).ravel()
        out[:, b] = flat[:, sel].mean(axis=1) if sel.any() else 0.0
    return np.log10(out + EPS)


def pooled(images: np.ndarray, side: int = POOLED_SIDE) -> np.ndarray:
    """Each image average-pooled to ``min(side, S)`` (S cropped to a multiple of it) and flattened.

    Args:
        images: (M, S, S) float images.

    Returns:
        (M, p * p) float64 with p = min(side, S).
    """
    x = np.asarray(images, dtype=np.float64)
    m, s, _ = x.shape
    p = min(side, s)
    f = s // p
    x = x[:, : p * f, : p * f].reshape(m, p, f, p, f).mean(axis=(2, 4))  # (M, p, p)
    return x.reshape(m, p * p)


def realism_features(images: np.ndarray) -> np.ndarray:
    """The two-sample classifier's features: pooled pixels, log radial spectrum, log Laplacian std.

    Args:
        images: (M, S, S) float images in [0, 1].

    Returns:
        (M, F) float64 with F = min(16, S)**2 + 16 + 1.
    """
    lap = np.log10(laplacian_std(images) + EPS)[:, None]  # (M, 1)
    return np.concatenate([pooled(images), radial_spectrum(images), lap], axis=1)


def realism(synthetic: np.ndarray, real: np.ndarray, folds: int = 5, seed: int = 0) -> RealismResult:
    """Two-sample realism test of synthetic against real images of the same classes.

    Args:
        synthetic: (M, S, S) synthetic images in [0, 1].
        real: (N, S, S) real images in [0, 1], the same side.
        folds: stratified cross-validation folds (fewer when a set has fewer images; at least 2).
        seed: fold assignment seed (the fit itself is deterministic).

    Returns:
        The AUROC of out-of-fold predictions and the Laplacian standard deviation ratio.

    Raises:
        ValueError: the sets are not stacks of square images of one side.
    """
    synthetic, real = np.asarray(synthetic, dtype=np.float32), np.asarray(real, dtype=np.float32)
    for name, x in (("synthetic", synthetic), ("real", real)):
        if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] < 3:
            raise ValueError(f"realism needs (n, S, S) {name} images with S >= 3, got shape {x.shape}")
    if synthetic.shape[1:] != real.shape[1:]:
        raise ValueError(f"realism compares images of one size: synthetic {synthetic.shape[1:]}, real {real.shape[1:]}")
    m, n = len(synthetic), len(real)
    ratio = None
    if m and n:
        real_sharpness = float(laplacian_std(real).mean())
        ratio = float(laplacian_std(synthetic).mean()) / real_sharpness if real_sharpness > 0 else None
    k = min(folds, m, n)
    if k < 2:
        log.warning("realism AUROC not computed: %d synthetic and %d real images (need 2 of each)", m, n)
        return RealismResult(None, ratio, m, n, 0)
    x = realism_features(np.concatenate([synthetic, real]))  # (M+N, F)
    y = np.r_[np.ones(m), np.zeros(n)]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=REGULARIZATION_C, max_iter=2000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    p = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]  # (M+N,) out-of-fold
    return RealismResult(float(roc_auc_score(y, p)), ratio, m, n, k)
