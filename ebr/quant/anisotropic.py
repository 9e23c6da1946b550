"""Score-aware (anisotropic) encoding of additive codes, after ScaNN (Guo et al., ICML 2020).

For inner-product search, a document's quantization error e = x - x^ costs ranking accuracy
through <q, e> for the queries that score the document high, and those queries point
roughly along the document itself. So the error along the document's direction u (the
parallel part) hurts far more than the same error spread over the other directions. The
encoder here picks codes that minimise

    loss(e) = |e_perp|^2 + eta |e_par|^2 = |e|^2 + (eta - 1) <e, u>^2

instead of |e|^2 (eta = 1: plain reconstruction error). The codes are ordinary RQ / LSQ codes,
so the index format, the serving path and the scan cost do not change.

    codes      :func:`refine_codes`: iterated conditional modes over an additive code (RQ or
               LSQ: the reconstruction is the sum of one codeword per codebook). Each codebook
               in turn picks its best codeword with the others fixed, starting from faiss' own
               codes, so the loss never rises. One sweep costs two [n, d] x [d, K] products
               per codebook.
    codebooks  :func:`fit_codebooks`: for fixed codes, each codebook in turn by weighted least
               squares (a d x d solve per codeword), as ScaNN trains its codebooks.

``eta`` is a data choice: Distill-VQ picks it on its held-out training queries
(:class:`ebr.train.distill_vq.DistillConfig`), and records it in the manifest.
"""

from __future__ import annotations

import logging

import numpy as np

from ebr.errors import SpecError
from ebr.metric import normalize_rows

__all__ = ["anisotropic_loss", "directions", "fit_codebooks", "refine_codes"]

logger = logging.getLogger(__name__)


def directions(v: np.ndarray) -> np.ndarray:
    """Unit rows of ``v`` (zero rows stay zero): the parallel directions u."""
    return normalize_rows(v)


def _check(residuals: np.ndarray, u: np.ndarray, codebooks: np.ndarray, codes: np.ndarray,
           eta: float) -> None:
    if codebooks.ndim != 3:
        raise SpecError(f"additive codebooks are [M, K, d], got shape {codebooks.shape}")
    m, _, d = codebooks.shape
    if residuals.ndim != 2 or residuals.shape[1] != d:
        raise SpecError(f"residuals have shape {residuals.shape}, codebooks are {d}-d")
    if u.shape != residuals.shape:
        raise SpecError(f"directions have shape {u.shape}, residuals {residuals.shape}")
    if codes.shape != (residuals.shape[0], m):
        raise SpecError(f"codes have shape {codes.shape}, expected ({residuals.shape[0]}, {m})")
    if not eta > 0:
        raise SpecError(f"eta must be > 0, got {eta}")


def _reconstruct(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Sum of each row's coded codewords: [n, d]."""
    return codebooks[np.arange(codebooks.shape[0])[None], codes].sum(1)


def anisotropic_loss(residuals: np.ndarray, u: np.ndarray, codebooks: np.ndarray,
                     codes: np.ndarray, eta: float) -> np.ndarray:
    """Per-row |e|^2 + (eta - 1) <e, u>^2 for e = residual - sum of the coded codewords."""
    residuals = np.asarray(residuals, dtype=np.float32)
    _check(residuals, u, codebooks, codes, eta)
    e = residuals - _reconstruct(codebooks, codes)
    return (e * e).sum(1) + (eta - 1.0) * (e * u).sum(1) ** 2


def refine_codes(residuals: np.ndarray, u: np.ndarray, codebooks: np.ndarray,
                 codes: np.ndarray, eta: float, passes: int = 2, chunk: int = 16384
                 ) -> np.ndarray:
    """Codes [n, M] that lower the anisotropic loss of ``residuals`` [n, d] (what the codes
    must reconstruct) with parallel directions ``u`` [n, d] (unit rows), by ``passes``
    sweeps of iterated conditional modes over the M codebooks [M, K, d], from ``codes``.

    Returns a new int64 array; a row's loss never rises above its loss under ``codes``.
    """
    residuals = np.asarray(residuals, dtype=np.float32)
    u = np.asarray(u, dtype=np.float32)
    codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
    codes = np.array(codes, dtype=np.int64)  # a copy: refined in place below
    _check(residuals, u, codebooks, codes, eta)
    if passes < 0:
        raise SpecError(f"passes must be >= 0, got {passes}")
    m_books = codebooks.shape[0]
    sq = (codebooks * codebooks).sum(-1)  # [M, K]
    w = np.float32(eta - 1.0)
    for s in range(0, len(codes), chunk):
        sl = slice(s, s + chunk)
        c = codes[sl]
        e = residuals[sl] - _reconstruct(codebooks, c)  # current error
        uu = u[sl]
        for _ in range(passes):
            for m in range(m_books):
                t = e + codebooks[m, c[:, m]]  # the error with codebook m's word taken out
                # loss(t - w_k) = |t|^2 - 2 <t, w_k> + |w_k|^2 + (eta - 1)(<t, u> - <w_k, u>)^2
                along = (t * uu).sum(1, keepdims=True) - uu @ codebooks[m].T
                score = sq[m][None] - 2.0 * (t @ codebooks[m].T) + w * along * along
                k = score.argmin(1)
                c[:, m] = k
                e = t - codebooks[m, k]
    return codes


def fit_codebooks(residuals: np.ndarray, u: np.ndarray, codebooks: np.ndarray,
                  codes: np.ndarray, eta: float) -> np.ndarray:
    """Codebooks [M, K, d] that lower the anisotropic loss for fixed ``codes``: one sweep of
    block coordinate descent, each codebook in turn by weighted least squares with the
    others fixed. With t_i what row i leaves for codebook m and A_i = I + (eta - 1) u_i u_i',
    codeword k becomes (sum_i A_i)^-1 sum_i A_i t_i over its rows (ScaNN's codebook update);
    unused codewords stay. Returns a new array; the total loss never rises.
    """
    residuals = np.asarray(residuals, dtype=np.float32)
    u = np.asarray(u, dtype=np.float32)
    codes = np.asarray(codes, dtype=np.int64)
    _check(residuals, u, codebooks, codes, eta)
    cb = np.array(codebooks, dtype=np.float32)
    m_books, _, d = cb.shape
    w = eta - 1.0
    e = residuals - _reconstruct(cb, codes)
    eye = np.eye(d)
    for m in range(m_books):
        t = e + cb[m, codes[:, m]]
        order = np.argsort(codes[:, m], kind="stable")
        words, starts, counts = np.unique(codes[order, m], return_index=True,
                                          return_counts=True)
        a = np.empty((len(words), d, d))
        b = np.empty((len(words), d))
        for j, (s0, c) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
            rows = order[s0:s0 + c]
            uk, tk = u[rows].astype(np.float64), t[rows].astype(np.float64)
            a[j] = c * eye + w * (uk.T @ uk)
            b[j] = tk.sum(0) + w * (uk * (uk * tk).sum(1, keepdims=True)).sum(0)
        cb[m, words] = np.linalg.solve(a, b[..., None])[..., 0].astype(np.float32)
        e = t - cb[m, codes[:, m]]
    return cb
