r"""Aspect assignment: from given labels, or by clustering response embeddings.

When the log carries no aspect labels, aspects are clusters of response embeddings: the user
supplies the embeddings (a column or a ``.npy`` file) or computes them with a local
embedding model directory, and a seeded k-means with ``C`` clusters assigns each response

- a hard label :math:`a = \arg\min_c \lVert e - \mu_c \rVert`, or
- a soft row :math:`q(c \mid y) = \mathrm{softmax}_c(-\lVert e - \mu_c \rVert / \tau)` with
  temperature :math:`\tau > 0` (small :math:`\tau` approaches the hard label).

k-means is implemented here in numpy (k-means++ seeding, Lloyd iterations, best of
``n_init`` restarts), so results depend only on the seed, not on optional packages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AspectAssignment",
    "KMeansResult",
    "assign_aspects",
    "embed_texts",
    "kmeans",
    "load_embeddings",
    "soft_assign",
]


@dataclass(frozen=True)
class KMeansResult:
    """Fitted k-means: ``centers`` (C, D), ``labels`` (N,), ``inertia`` and iterations run."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int


@dataclass(frozen=True)
class AspectAssignment:
    """Aspects of N responses: hard ``labels`` (N,), optional soft ``probs`` (N, C), ``centers``."""

    labels: np.ndarray
    centers: np.ndarray
    probs: np.ndarray | None = None

    @property
    def n_aspects(self) -> int:
        """``C``."""
        return int(self.centers.shape[0])


def _sq_dists(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (N, C), clipped at 0 against rounding."""
    d = (
        np.einsum("nd,nd->n", x, x)[:, None]
        - 2.0 * x @ centers.T
        + np.einsum("cd,cd->c", centers, centers)[None, :]
    )
    return np.maximum(d, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    closest = _sq_dists(x, centers[:1])[:, 0]
    for j in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: repeat points
            idx = int(rng.integers(n))
        else:
            idx = int(rng.choice(n, p=closest / total))
        centers[j] = x[idx]
        closest = np.minimum(closest, _sq_dists(x, centers[j : j + 1])[:, 0])
    return centers


def kmeans(
    x: Any,
    n_clusters: int,
    *,
    seed: int = 0,
    n_init: int = 4,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> KMeansResult:
    """Seeded k-means (k-means++ initialisation, Lloyd iterations, best of ``n_init``).

    Parameters
    ----------
    x : (N, D) array of float
    n_clusters : int
        ``C``, with ``1 <= C <= N``.
    seed : int
        Seed of the initialisation; the result is a deterministic function of it.
    n_init : int
        Restarts; the one with the smallest inertia is returned.
    max_iter : int
    tol : float
        Stop when the centers move less than ``tol`` (relative to the data scale).

    Returns
    -------
    KMeansResult
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-dimensional (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must lie in [1, {n}] (the number of rows), got {n_clusters}")
    if n_init < 1 or max_iter < 1:
        raise ValueError("n_init and max_iter must be >= 1")
    rng = np.random.default_rng(seed)
    scale = float(np.mean(np.var(x, axis=0))) or 1.0
    best: KMeansResult | None = None
    for _ in range(n_init):
        centers = _kmeans_pp(x, n_clusters, rng)
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007
            labels = np.argmin(_sq_dists(x, centers), axis=1)
            sums = np.zeros_like(centers)
            np.add.at(sums, labels, x)
            counts = np.bincount(labels, minlength=n_clusters)
            new = centers.copy()
            nz = counts > 0
            new[nz] = sums[nz] / counts[nz, None]
            if (~nz).any():  # re-seed empty clusters at the farthest points
                far = np.argsort(-_sq_dists(x, new).min(axis=1))
                new[~nz] = x[far[: int((~nz).sum())]]
            shift = float(np.sum((new - centers) ** 2))
            centers = new
            if shift <= tol * scale:
                break
        d = _sq_dists(x, centers)
        labels = np.argmin(d, axis=1)
        inertia = float(d[np.arange(n), labels].sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(centers, labels.astype(np.int64), inertia, it)
    assert best is not None
    return best


def soft_assign(x: Any, centers: Any, temperature: float) -> np.ndarray:
    r"""Soft aspect rows :math:`\mathrm{softmax}_c(-\lVert x - \mu_c \rVert / \tau)`, (N, C).

    Parameters
    ----------
    x : (N, D) array
    centers : (C, D) array
    temperature : float
        :math:`\tau > 0`, in the units of the embedding distances.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = np.asarray(x, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    logits = -np.sqrt(_sq_dists(x, centers)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def assign_aspects(
    embeddings: Any,
    n_aspects: int,
    *,
    seed: int = 0,
    soft: bool = False,
    temperature: float = 1.0,
    centers: Any = None,
    n_init: int = 4,
    max_iter: int = 100,
) -> AspectAssignment:
    """Aspects of responses from their embeddings by seeded k-means.

    Parameters
    ----------
    embeddings : (N, D) array
    n_aspects : int
        ``C``, the number of clusters.
    seed : int
    soft : bool
        Also return soft rows (see :func:`soft_assign`).
    temperature : float
        Softmax temperature of the soft rows.
    centers : (C, D) array, optional
        Use these centers instead of fitting (e.g. fitted on a sample of a large log).

    Returns
    -------
    AspectAssignment
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if centers is None:
        fit = kmeans(x, n_aspects, seed=seed, n_init=n_init, max_iter=max_iter)
        c, labels = fit.centers, fit.labels
    else:
        c = np.asarray(centers, dtype=np.float64)
        if c.ndim != 2 or c.shape[0] != n_aspects or (x.size and c.shape[1] != x.shape[1]):
            raise ValueError(
                f"centers must have shape ({n_aspects}, {x.shape[1] if x.ndim == 2 else 'D'}), "
                f"got {c.shape}"
            )
        labels = (
            np.argmin(_sq_dists(x, c), axis=1).astype(np.int64)
            if x.shape[0]
            else np.zeros(0, np.int64)
        )
    probs = soft_assign(x, c, temperature) if soft else None
    return AspectAssignment(labels=labels, centers=c, probs=probs)


def load_embeddings(path: str | os.PathLike[str], n_rows: int | None = None) -> np.ndarray:
    """Embeddings from a ``.npy`` file, one row per row of the log (in reading order).

    Raises
    ------
    ValueError
        Not 2-dimensional, not finite, or ``n_rows`` given and different.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"embeddings file not found: {p}")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"cannot read embeddings {p.name}: {e}") from e
    if arr.ndim != 2:
        raise ValueError(f"embeddings in {p.name} must be 2-dimensional (N, D), got {arr.shape}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(
            f"embeddings in {p.name} have {arr.shape[0]} rows but the log has {n_rows} rows"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"embeddings in {p.name} contain NaN or inf")
    return arr


def embed_texts(
    texts: Sequence[str],
    model_dir: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    device: str | None = None,
    normalize: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Embed texts with a local model directory (never downloads).

    A sentence-transformers directory (with ``modules.json``) is used through
    ``sentence_transformers`` when that package is importable. Otherwise the directory is read
    as a Hugging Face encoder (``AutoModel``) and the last hidden states are mean-pooled over
    the non-padding tokens.

    Parameters
    ----------
    texts : sequence of str
    model_dir : path
    batch_size : int
    device : str, optional
        ``"cpu"``, ``"cuda"``...; default CUDA when available.
    normalize : bool
        L2-normalise the embeddings (k-means then clusters by cosine similarity).

    Returns
    -------
    (N, D) float64 array
    """
    import torch

    p = Path(model_dir)
    if not p.is_dir():
        raise FileNotFoundError(f"embedding model directory not found: {p}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = list(texts)
    if (p / "modules.json").exists():
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            SentenceTransformer = None
        if SentenceTransformer is not None:
            model = SentenceTransformer(str(p), device=dev, local_files_only=True)
            emb = model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=normalize,
                show_progress_bar=progress,
                convert_to_numpy=True,
            )
            return np.asarray(emb, dtype=np.float64)
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    model = AutoModel.from_pretrained(str(p), local_files_only=True).to(dev).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(
                texts[i : i + batch_size], padding=True, truncation=True, return_tensors="pt"
            ).to(dev)
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            if normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out.append(emb.cpu().numpy().astype(np.float64))
    if not out:
        return np.zeros((0, 0))
    return np.concatenate(out)
