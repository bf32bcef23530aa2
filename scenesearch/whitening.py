"""Descriptor whitening for retrieval: PCA whitening and learned whitening (Lw).

Both follow Radenović et al. (cnnimageretrieval-pytorch): descriptors are L2-normalised,
centred, projected and L2-normalised again ("L2 -> whitening -> L2"). PCA whitening needs no
labels; learned whitening whitens the differences of matching pairs, so that the nuisance
variation inside a class is shrunk, then rotates to the directions of largest spread.
Fitting takes train rows only; the result is a small frozen object that the caller stores.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from scenesearch.distances import unit_rows
from scenesearch.errors import DataError

__all__ = ["Whitening", "learned_whitening", "pca_whitening", "same_class_pairs"]

KINDS = ("pca", "learned")


@dataclass(frozen=True, eq=False)  # eq=False: == on arrays is ambiguous, identity is enough
class Whitening:
    """A fitted whitening: x -> L2(projection @ (L2(x) - mean)).

    Attributes:
        mean: (d,) float32, subtracted after the first L2 step.
        projection: (k, d) float32, rows are the kept components, strongest first.
        kind: "pca" or "learned".
    """

    mean: np.ndarray
    projection: np.ndarray
    kind: str

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float32)
        projection = np.asarray(self.projection, dtype=np.float32)
        if self.kind not in KINDS:
            raise DataError(f"Whitening kind must be one of {KINDS}, got {self.kind!r}.")
        if mean.ndim != 1 or projection.ndim != 2 or projection.shape[1] != mean.shape[0]:
            raise DataError(
                f"Whitening needs mean (d,) and projection (k, d), got {mean.shape} and {projection.shape}."
            )
        # frozen: object.__setattr__ is the sanctioned way to normalise fields in __post_init__
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "projection", projection)

    @property
    def dim(self) -> int:
        """Number of output components k."""
        return int(self.projection.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whiten descriptors: L2-normalise, centre, project, L2-normalise.

        Args:
            x: (n, d) descriptors.

        Returns:
            (n, k) float32; all-zero rows give finite rows, never NaN.

        Raises:
            DataError: x is not 2-D or its width differs from the fitted d.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise DataError(
                f"Whitening expects descriptors of shape (n, {self.mean.shape[0]}), got {x.shape}."
            )
        z = (unit_rows(x) - self.mean) @ self.projection.T  # (n, k)
        return unit_rows(z).astype(np.float32, copy=False)

    def to_bytes(self) -> bytes:
        """Serialise to an .npz byte string (mean, projection, kind)."""
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, projection=self.projection, kind=np.array(self.kind))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        """Load what to_bytes wrote.

        Raises:
            DataError: the bytes are not an .npz holding mean, projection and kind.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return cls(mean=npz["mean"], projection=npz["projection"], kind=str(npz["kind"]))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"Whitening bytes are not a valid whitening archive ({exc}).") from exc


def _check_rows(x: np.ndarray, what: str) -> np.ndarray:
    """float64 copy of x after the checks every fit shares."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{what} needs a 2-D array of descriptors, got {x.ndim}-D.")
    if len(x) < 2:
        raise DataError(f"{what} needs at least 2 rows, got {len(x)}.")
    if not np.isfinite(x).all():
        raise DataError(f"{what} got {int((~np.isfinite(x)).sum())} non-finite descriptor values.")
    return x


def _n_kept(eigvals: np.ndarray, n_rows: int, eps: float, dim: int | None, what: str) -> int:
    """Components to keep from descending eigenvalues: above eps * max, at most n - 1, d and dim."""
    if eigvals[0] <= 0:
        raise DataError(f"{what} found no variance in the rows (all descriptors identical).")
    k = int(np.count_nonzero(eigvals > eps * eigvals[0]))
    # n rows span at most n - 1 directions around their mean; the rest is rounding noise
    k = min(k, n_rows - 1, len(eigvals))
    if dim is not None:
        k = min(k, dim)
    return max(k, 1)


def _check_params(dim: int | None, eps: float) -> None:
    if dim is not None and (not isinstance(dim, (int, np.integer)) or dim < 1):
        raise ValueError(f"dim must be a positive integer or None, got {dim!r}.")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}.")


def pca_whitening(
    x: np.ndarray, dim: int | None = None, shrinkage: float = 1.0, eps: float = 1e-6
) -> Whitening:
    """Fit PCA whitening on train descriptors.

    With m the mean and C = V diag(λ) Vᵀ the covariance (1 / (n - 1)) of the L2-normalised
    rows, the projection is diag(λ^(-s/2)) Vᵀ with s = shrinkage: s = 1 whitens fully
    (unit variance per component), s = 0 is a PCA rotation only.

    Args:
        x: (n, d) train descriptors; rows are L2-normalised first, as apply does.
        dim: at most this many components; the result may have fewer (see Returns).
        shrinkage: s in [0, 1].
        eps: eigenvalues below eps * λ_max are dropped and those kept are floored there, so
            dead (all-zero) channels, common in random-init CNNs, cannot blow up.

    Returns:
        Whitening of kind "pca" with k = min(dim, #λ > eps·λ_max, n - 1, d) components.

    Raises:
        DataError: fewer than 2 rows, non-finite values, or no variance at all.
        ValueError: dim, shrinkage or eps out of range.
    """
    _check_params(dim, eps)
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage!r}.")
    xn = unit_rows(_check_rows(x, "PCA whitening"))
    mean = xn.mean(axis=0)
    xc = xn - mean
    cov = xc.T @ xc / (len(xn) - 1)  # (d, d)
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    k = _n_kept(eigvals, len(xn), eps, dim, "PCA whitening")
    lam = np.maximum(eigvals[:k], eps * eigvals[0])
    projection = (lam ** (-shrinkage / 2.0))[:, None] * eigvecs[:, :k].T  # (k, d)
    return Whitening(mean=mean, projection=projection, kind="pca")


def learned_whitening(
    x: np.ndarray, pairs: np.ndarray, dim: int | None = None, eps: float = 1e-6
) -> Whitening:
    """Fit learned whitening (Lw, Radenović et al.) from matching pairs of train descriptors.

    On L2-normalised rows: m = mean of the rows pairs[:, 0]; S = Σ (x_i - x_j)(x_i - x_j)ᵀ / P
    over the pairs; P1 = inv(L) with L Lᵀ = S + (eps · trace(S) / d) I (a fixed ridge instead of
    retrying the Cholesky); D = Σ_rows z zᵀ / n with z = P1 (x - m) (second moment about the
    same m that apply subtracts, as in cirtorch); D = V diag(μ) Vᵀ, μ descending; projection
    = Vᵀ P1. Components with μ <= eps · μ_max are dropped, as in pca_whitening.

    Args:
        x: (n, d) train descriptors.
        pairs: (P, 2) integer row indices of matching descriptors (e.g. same_class_pairs).
        dim: at most this many components; the result may have fewer.
        eps: relative ridge of the Cholesky and relative floor of the kept components.

    Returns:
        Whitening of kind "learned".

    Raises:
        DataError: fewer than 2 rows, non-finite values, no pairs, pairs not (P, 2), or an
            index outside x.
        ValueError: dim or eps out of range.
    """
    _check_params(dim, eps)
    xn = unit_rows(_check_rows(x, "Learned whitening"))
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        raise DataError("Learned whitening got no matching pairs.")
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise DataError(
            f"Learned whitening needs pairs as a (P, 2) integer array, got {pairs.shape} {pairs.dtype}."
        )
    if pairs.min() < 0 or pairs.max() >= len(xn):
        bad = pairs.min() if pairs.min() < 0 else pairs.max()
        raise DataError(f"Learned whitening got pair index {int(bad)} but x has {len(xn)} rows.")
    n, d = xn.shape
    mean = xn[pairs[:, 0]].mean(axis=0)
    diff = xn[pairs[:, 0]] - xn[pairs[:, 1]]  # (P, d)
    scatter = diff.T @ diff / len(diff)
    trace = float(np.trace(scatter))
    ridge = eps * trace / d if trace > 0 else eps  # identical pairs: any small ridge will do
    chol = np.linalg.cholesky(scatter + ridge * np.eye(d))
    p1 = np.linalg.inv(chol)  # (d, d), whitens the within-pair differences
    z = (xn - mean) @ p1.T  # (n, d)
    eigvals, eigvecs = np.linalg.eigh(z.T @ z / n)
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    k = _n_kept(eigvals, n, eps, dim, "Learned whitening")
    return Whitening(mean=mean, projection=eigvecs[:, :k].T @ p1, kind="learned")


def same_class_pairs(
    labels: np.ndarray,
    rng: np.random.Generator,
    per_row: int = 1,
    anchors: np.ndarray | None = None,
) -> np.ndarray:
    """Draw matching pairs for learned whitening: each anchor with other rows of its label.

    Args:
        labels: (n,) labels, compared as strings; "" marks a row without a label, which never
            appears in a pair (as anchor or partner).
        rng: the seeded generator; the same state gives the same pairs.
        per_row: distinct partners per anchor; fewer when its class has fewer other rows.
        anchors: row indices to draw for (default: every labelled row); unlabelled ones are
            skipped.

    Returns:
        (P, 2) int64, columns (anchor, partner), anchors in the order given; never a row with
        itself, never two labels.

    Raises:
        ValueError: per_row < 1, or an anchor outside labels.
    """
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row!r}.")
    labels = np.asarray(labels).astype(str)
    n = len(labels)
    if anchors is None:
        anchors = np.flatnonzero(labels != "")
    anchors = np.asarray(anchors, dtype=np.int64).reshape(-1)
    if len(anchors) and (anchors.min() < 0 or anchors.max() >= n):
        bad = anchors.min() if anchors.min() < 0 else anchors.max()
        raise ValueError(f"anchors must index the {n} labels, got index {int(bad)}.")
    classes, inverse = np.unique(labels, return_inverse=True)
    members = {c: np.flatnonzero(inverse == c) for c in range(len(classes)) if classes[c] != ""}
    out: list[np.ndarray] = []
    for a in anchors:
        rows = members.get(int(inverse[a]))
        if rows is None or len(rows) < 2:
            continue
        # draw among the m - 1 others by skipping the anchor's own position
        pos = int(np.searchsorted(rows, a))
        picks = rng.choice(len(rows) - 1, size=min(per_row, len(rows) - 1), replace=False)
        partners = rows[picks + (picks >= pos)]
        out.append(np.stack([np.full(len(partners), a, dtype=np.int64), partners], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(out).astype(np.int64, copy=False)
