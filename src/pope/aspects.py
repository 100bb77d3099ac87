r"""Aspect assignment: from given labels, or by clustering response embeddings.

When the log carries no aspect labels, aspects are clusters of response embeddings: the user
supplies the embeddings (a column or a ``.npy`` file) or computes them with a local
embedding model directory, and a seeded k-means with ``C`` clusters assigns each response

- a hard label :math:`a = \arg\min_c \lVert e - \mu_c \rVert`, or
- a soft row :math:`q(c \mid y) = \mathrm{softmax}_c(-\lVert e - \mu_c \rVert / \tau)` with
  temperature :math:`\tau > 0` (small :math:`\tau` approaches the hard label).

k-means is implemented here in numpy (k-means++ seeding, Lloyd iterations, best of
``n_init`` restarts), so results depend only on the seed, not on optional packages.

An :class:`AspectModel` is what assigns aspects, saved as JSON (never pickled) so that
training, evaluation and held-out numbers use one clustering: the k-means centres with the
embedding source (a column name, or a local embedding model directory), or the label
names. :func:`aspect_table` describes the aspects of an evaluation: sizes, the coverage of
the logging and the target policy per aspect, and representative responses.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ASPECT_MODEL_FORMAT",
    "AspectAssignment",
    "AspectModel",
    "KMeansResult",
    "aspect_table",
    "assign_aspects",
    "embed_texts",
    "format_aspect_table",
    "kmeans",
    "load_embeddings",
    "soft_assign",
]

#: The ``format`` field of a saved :class:`AspectModel`.
ASPECT_MODEL_FORMAT = "pope-aspect-model"


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
            pass  # the mean pooling of transformers below
        else:
            st_model = SentenceTransformer(str(p), device=dev, local_files_only=True)
            vectors = st_model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=normalize,
                show_progress_bar=progress,
                convert_to_numpy=True,
            )
            return np.asarray(vectors, dtype=np.float64)
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


# ----------------------------------------------------------------------------- saved model
@dataclass(frozen=True)
class AspectModel:
    """How aspects were assigned, to be applied again to other logs.

    Attributes
    ----------
    kind : {"kmeans", "labels", "none"}
    n_aspects : int
        ``C``.
    centers : (C, D) float64 array, optional
        k-means centres (``kind="kmeans"``).
    names : list of str, optional
        Aspect label names (code ``c`` is ``names[c]``), when the labels are text.
    embedding : dict
        Where embeddings come from for ``kind="kmeans"``: ``{"source": "column", "column":
        NAME}``, ``{"source": "model", "model": DIR}`` or ``{"source": "npy"}`` (a file
        aligned with one log only: another log needs its own file).
    soft, temperature, seed
        The assignment options (:func:`assign_aspects`).
    """

    kind: str
    n_aspects: int
    centers: np.ndarray | None = None
    names: list[str] | None = None
    embedding: dict[str, Any] = field(default_factory=dict)
    soft: bool = False
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("kmeans", "labels", "none"):
            raise ValueError(f"aspect model kind must be kmeans, labels or none, got {self.kind!r}")
        c = self.n_aspects
        if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or c < 1:
            raise ValueError(f"aspect model n_aspects must be an int >= 1, got {c!r}")
        if self.kind == "kmeans":
            if self.centers is None:
                raise ValueError("a k-means aspect model needs centers")
            cen = np.asarray(self.centers, dtype=np.float64)
            if cen.ndim != 2 or cen.shape[0] != c or not np.isfinite(cen).all():
                raise ValueError(
                    f"aspect model centers must be a finite ({c}, D) array, got shape {cen.shape}"
                )
            object.__setattr__(self, "centers", cen)
        if self.names is not None:
            if len(self.names) != c or not all(isinstance(n, str) for n in self.names):
                raise ValueError(f"aspect model names must be {c} strings")
            object.__setattr__(self, "names", list(self.names))
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"aspect model temperature must be > 0, got {self.temperature!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what :meth:`save` writes)."""
        return {
            "format": ASPECT_MODEL_FORMAT,
            "version": 1,
            "kind": self.kind,
            "n_aspects": int(self.n_aspects),
            "centers": None if self.centers is None else self.centers.tolist(),
            "names": self.names,
            "embedding": dict(self.embedding),
            "soft": bool(self.soft),
            "temperature": float(self.temperature),
            "seed": int(self.seed),
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model as JSON (floats round-trip exactly); an existing file only with
        ``overwrite``. Written to a temporary name and renamed."""
        p = Path(path)
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass overwrite=True (--overwrite) to replace it")
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return p

    @classmethod
    def from_dict(cls, d: Any, source: str = "aspect model") -> AspectModel:
        """Check and build from :meth:`to_dict` output (plain JSON values only)."""
        if not isinstance(d, dict) or d.get("format") != ASPECT_MODEL_FORMAT:
            raise ValueError(f"{source}: not a pope aspect model (format {ASPECT_MODEL_FORMAT!r})")
        if d.get("version") != 1:
            raise ValueError(f"{source}: unsupported aspect model version {d.get('version')!r}")
        emb = d.get("embedding") or {}
        if not isinstance(emb, dict) or not all(
            isinstance(v, (str, type(None))) for v in emb.values()
        ):
            raise ValueError(f"{source}: 'embedding' must map names to strings")
        try:
            # JSON values, checked by __post_init__ (kind, n_aspects, centers, ...)
            kwargs: dict[str, Any] = dict(
                kind=d.get("kind"),
                n_aspects=d.get("n_aspects"),
                centers=None if d.get("centers") is None else np.asarray(d["centers"], float),
                names=d.get("names"),
                embedding=emb,
                soft=bool(d.get("soft", False)),
                temperature=d.get("temperature", 1.0),
                seed=int(d.get("seed", 0)),
            )
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AspectModel:
        """Read a model written by :meth:`save` (JSON; nothing in it is executed)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"aspect model file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not a JSON aspect model ({e})") from e
        return cls.from_dict(d, str(p))

    def assign(self, embeddings: Any) -> AspectAssignment:
        """Aspects of new responses from their embeddings with the saved centres."""
        if self.kind != "kmeans":
            raise ValueError(f"assign needs a k-means aspect model, this one is {self.kind!r}")
        x = np.asarray(embeddings, dtype=np.float64)
        assert self.centers is not None  # a k-means model has centres (__post_init__)
        if x.ndim != 2 or x.shape[1] != self.centers.shape[1]:
            raise ValueError(
                f"embeddings of shape {x.shape} do not match the aspect model's "
                f"dimension {self.centers.shape[1]}"
            )
        return assign_aspects(
            x, self.n_aspects, centers=self.centers, soft=self.soft, temperature=self.temperature
        )


def aspect_table(
    aspect: Any,
    aspect_probs: Any,
    prompt_ptr: Any,
    p_target: Any,
    responses: Sequence[str] | None,
    *,
    names: Sequence[Any] | None = None,
    embeddings: Any = None,
    centers: Any = None,
    n_examples: int = 3,
) -> list[dict[str, Any]]:
    r"""One row per aspect: size, logging vs target coverage, representative responses.

    With :math:`q_{ik}` the aspect row of response ``k`` of prompt ``i`` (one-hot for hard
    labels), the logging coverage of aspect ``c`` is the mean over prompts of the share of
    logged responses in it, :math:`\bar p_0(c) = \frac1n\sum_i \frac1{K_i}\sum_k q_{ikc}`, and
    the target coverage the mean of the per-prompt plug-in target coverage
    :math:`\bar p_\theta(c) = \frac1n\sum_i \hat p_\theta(c\mid x_i)` over the same prompts
    (both sum to 1 over the aspects). ``size`` is :math:`\sum_{ik} q_{ikc}` (responses).

    Parameters
    ----------
    aspect : (N,) int or None;  aspect_probs : (N, C) float or None
    prompt_ptr : (n+1,) int
    p_target : (n, C) float or None
        Plug-in target coverage per prompt (:attr:`pope.PopeEstimate.p_hat`).
    responses : sequence of str, optional
        Response texts in the same (grouped) order.
    names : aspect names, optional
    embeddings, centers : optional
        With both, representatives are the responses nearest to each centre; otherwise the
        first distinct responses of the aspect (largest :math:`q_{ikc}` for soft rows).
    n_examples : int
        Representatives per aspect.
    """
    ptr = np.asarray(prompt_ptr, dtype=np.int64)
    counts = np.diff(ptr)
    if aspect_probs is not None:
        q = np.asarray(aspect_probs, dtype=np.float64)
    else:
        a = np.asarray(aspect, dtype=np.int64)
        c = len(names) if names is not None else (int(a.max()) + 1 if a.size else 1)
        if p_target is not None:
            c = max(c, np.asarray(p_target).shape[1])
        q = np.zeros((a.shape[0], c))
        q[np.arange(a.shape[0]), a] = 1.0
    n_c = q.shape[1]
    keep = counts > 0
    seg = np.repeat(np.arange(len(counts)), counts)
    per_prompt = np.zeros((len(counts), n_c))
    np.add.at(per_prompt, seg, q)
    per_prompt[keep] /= counts[keep, None]
    p0 = per_prompt[keep].mean(axis=0) if keep.any() else np.full(n_c, math.nan)
    pt = None
    if p_target is not None:
        pt_arr = np.asarray(p_target, dtype=np.float64)
        pt = pt_arr[keep].mean(axis=0) if keep.any() else np.full(n_c, math.nan)
    rows = []
    for c in range(n_c):
        if embeddings is not None and centers is not None:
            d = _sq_dists(
                np.asarray(embeddings, np.float64), np.asarray(centers, np.float64)[c : c + 1]
            )[:, 0]
            order = np.argsort(d + np.where(q[:, c] > 0, 0.0, np.inf), kind="stable")
        else:
            order = np.argsort(-q[:, c], kind="stable")
        ex: list[str] = []
        if responses is not None:
            for j in order:
                if q[j, c] <= 0 or len(ex) >= n_examples:
                    break
                if responses[j] not in ex:
                    ex.append(responses[j])
        rows.append(
            {
                "aspect": c,
                "name": None if names is None or c >= len(names) else str(names[c]),
                "size": float(q[:, c].sum()),
                "logging_coverage": float(p0[c]),
                "target_coverage": None if pt is None else float(pt[c]),
                "examples": ex,
            }
        )
    return rows


def format_aspect_table(rows: Sequence[dict[str, Any]], width: int = 48) -> str:
    """The rows of :func:`aspect_table` as aligned text."""
    head = f"{'aspect':<16} {'size':>8} {'logging':>8} {'target':>8}  examples"
    lines = [head, "-" * len(head)]
    for r in rows:
        label = r["name"] if r["name"] is not None else str(r["aspect"])
        tgt = "-" if r["target_coverage"] is None else f"{r['target_coverage']:.3f}"
        ex = " | ".join(e if len(e) <= width else e[: width - 3] + "..." for e in r["examples"])
        lines.append(
            f"{label[:16]:<16} {r['size']:>8.4g} {r['logging_coverage']:>8.3f} {tgt:>8}  {ex}"
        )
    return "\n".join(lines)
