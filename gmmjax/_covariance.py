"""Covariance maths: one class per covariance type (:class:`CovarianceKind`).

Shapes follow scikit-learn: ``full`` ``(K, D, D)``, ``tied`` ``(D, D)``, ``diag`` ``(K, D)``,
``spherical`` ``(K,)``. A *precision Cholesky* factor ``P`` satisfies ``precision = P Pᵀ``
(upper triangular for the matrix types, ``1/sqrt(variance)`` for the others), so the
whitened residual of ``x`` under component ``k`` is ``(x - μ_k) P_k``.

Everything that depends on the type lives in its class (``Full``, ``Tied``, ``Diag``,
``Spherical``; full and tied share the matrix maths of ``_MatrixKind``, diag and spherical
the variance maths of ``_DiagonalKind``), looked up by name with :func:`covariance_kind`.
The functions at the end of this module are written once for every type on top of the kinds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

# A covariance that still cannot be factorised after ``reg_covar`` is added gets this many
# machine epsilons of each feature's variance added to its diagonal (see regularize_covariances).
_JITTER_EPS = 1e3

# Up to this many features, whitening and the scatter are written feature by feature as
# fused elementwise products and reductions over the samples: XLA runs batched products of
# such tiny matrices as loops of tiny GEMMs, 1.5–3× slower (benchmarks/NOTES.md).
SMALL_FEATURES = 4


def _feature_columns(residuals: jax.Array) -> list:
    return [residuals[..., d] for d in range(residuals.shape[-1])]


def _eye_like(matrices: jax.Array) -> jax.Array:
    """Identity matrices of the same shape (and batch shape) as ``matrices``."""
    return jnp.broadcast_to(jnp.eye(matrices.shape[-1], dtype=matrices.dtype), matrices.shape)


def _diagonal_mask(matrices: jax.Array) -> jax.Array:
    """Boolean identity matrices of ``matrices``' shape (explicit broadcast over batch axes)."""
    return jnp.broadcast_to(jnp.eye(matrices.shape[-1], dtype=bool), matrices.shape)


def _on_diagonal(matrices: jax.Array, diagonal: jax.Array, off_diagonal) -> jax.Array:
    """``diagonal`` (``(..., D)``) on the diagonal of ``matrices``' shape, ``off_diagonal`` elsewhere."""
    return jnp.where(_diagonal_mask(matrices), jnp.broadcast_to(diagonal[..., None, :], matrices.shape), off_diagonal)


# --------------------------------------------------------------------------- one class per type


class CovarianceKind:
    """Everything that depends on the covariance type, for one type.

    Arrays come in scikit-learn's shapes for the type (covariances and precision Cholesky
    factors alike, see :meth:`shape`); every method accepts extra leading batch axes where
    the shared code does (``vmap`` works anyway). The kinds are stateless singletons, looked
    up by name with :func:`covariance_kind`; the Python-level dispatch happens at trace
    time, so XLA sees exactly the operations of the type. Adding a covariance type means
    adding one subclass and registering it in :data:`COVARIANCE_KINDS`.

    Class attributes:
      name: the type's name (``GMMParams.covariance_type``).
      matrix: covariances are ``(…, D, D)`` matrices with a triangular precision factor
        (full, tied); otherwise they are variances (diag, spherical) and the E-step may use
        its expanded matrix-product form (see :meth:`diagonal_precisions`).
      shared: one covariance for all components (tied).
      component_ndim: axes per component after the component axis (``None`` when shared).
      has_feature_axis: the log-diagonal of ``P`` (see :meth:`raw_log_diagonal`) ends with a
        feature axis (all but spherical).
    """

    name: str = ""
    matrix: bool = False
    shared: bool = False
    component_ndim: int | None = 0
    has_feature_axis: bool = True

    def __repr__(self) -> str:
        return f"covariance_kind({self.name!r})"

    # -- shapes and counts
    def shape(self, num_components: int, num_features: int) -> tuple:
        """scikit-learn's covariance (and precision Cholesky) shape."""
        raise NotImplementedError

    def num_parameters(self, num_components: int, num_features: int) -> int:
        """Free parameters in the covariances, as scikit-learn counts them."""
        raise NotImplementedError

    def first_components(self, covariances: jax.Array, num_components: int) -> jax.Array:
        """The covariances of the first ``num_components`` components (batch axes kept)."""
        if self.shared:
            return covariances
        assert self.component_ndim is not None  # None only for the shared (tied) kind
        return covariances[(Ellipsis, slice(None, num_components)) + (slice(None),) * self.component_ndim]

    # -- factors and densities
    def cholesky_factor(self, covariances):
        """Lower Cholesky factor ``L`` of each covariance (``cov = L Lᵀ``); square root for variances."""
        raise NotImplementedError

    def precision_cholesky(self, covariances):
        """Precision Cholesky factor ``P`` (``precision = P Pᵀ``), same shape."""
        raise NotImplementedError

    def covariances_from_precisions(self, precisions):
        """Covariances from precisions in scikit-learn's ``precisions_init`` shapes."""
        raise NotImplementedError

    def precisions_from_precision_cholesky(self, prec_chol, xp=jnp):
        """``P Pᵀ`` (or ``P²``); ``xp=np`` keeps NumPy arrays NumPy (float64)."""
        raise NotImplementedError

    def log_det_precision_cholesky(self, prec_chol, num_features: int):
        """``log det P`` per component: ``(K,)``, or ``()`` for a shared covariance."""
        raise NotImplementedError

    def whitened_squared_norms(self, residuals, prec_chol):
        """``‖(x_n − μ_k) P_k‖²`` for residuals ``(K, N, D)``: ``(K, N)``."""
        raise NotImplementedError

    def diagonal_precisions(self, prec_chol, num_features: int):
        """``(K, D)`` precisions ``1/σ²_kd`` (variance types only)."""
        raise NotImplementedError(f"{self.name!r} covariances are not diagonal")

    # -- the expanded E-step (gmmjax._stats._expanded_e_step)
    def second_order_features(self, centred):
        """``(c, F)`` second-order features ``φ(x̃)`` of centred rows ``(c, D)``: ``x̃²`` for
        the variance types (``F = D``), the upper triangle ``x̃_i x̃_j`` (``i ≤ j``, row-major)
        for the matrix types (``F = D(D+1)/2``)."""
        raise NotImplementedError

    def expanded_terms(self, prec_chol, covariances, offsets):
        """Coefficients of the squared norm expanded about a shift ``g``.

        With ``x̃ = x − g`` and ``m_k = μ_k − g`` (``offsets``, ``(K, D)``),
        ``‖(x − μ_k) P_k‖² = a_k · φ(x̃) − 2 b_k · x̃ + c_k``. Returns ``(a, b, c, severity)``:
        ``a`` ``(K, F)`` (``(1, F)`` when shared), ``b = Λ_k m_k`` ``(K, D)``,
        ``c = m_kᵀ Λ_k m_k`` ``(K,)`` and ``severity`` ``(K,)``, a bound on the cancellation of
        the expanded form for points of component ``k``, in units of the squared norm's
        value: its rounding error is about ``eps · severity``.
        """
        raise NotImplementedError

    def moments_from_features(self, packed):
        """Second moments in the statistics' shape from their ``(K, F)`` feature form."""
        raise NotImplementedError

    def outer(self, a, b):
        """``a_k b_kᵀ`` for ``(K, D)`` rows in the statistics' shape (its diagonal for variances)."""
        raise NotImplementedError

    def components(self, prec_chol, index):
        """The factors of the components ``index`` (``(S,)`` ints); a shared factor as is."""
        return prec_chol[index]

    # -- statistics and the M-step
    def scatter(self, residuals, weighted_resp):
        """Weighted second moments of residuals ``(K, N, D)`` with weights ``(K, N)``:
        ``(K, D, D)`` for the matrix types, the diagonal ``(K, D)`` otherwise."""
        raise NotImplementedError

    def covariances_from_moments(self, second_moments, counts, mean_offsets):
        """Unregularised covariances from moments about a per-component shift
        (see :meth:`covariances_from_moments`)."""
        raise NotImplementedError

    def variances(self, covariances):
        """Per-feature variances: ``(K, D)`` (full, diag), ``(D,)`` (tied), ``(K,)`` (spherical)."""
        raise NotImplementedError

    def add_to_diagonal(self, covariances, value):
        """``covariances`` with the scalar ``value`` added to every variance."""
        raise NotImplementedError

    def largest_and_range(self, finite_variances, mean_range):
        """The largest variance and the range of the means (``(1, D)``) that set the spread
        of the fit for :func:`regularize_covariances`, per feature and component as the
        covariances share them (default: per feature, across components)."""
        return jnp.max(finite_variances, axis=0, keepdims=True), mean_range

    def repair(self, cov, floor, finite_variances):
        """``(covariances, repaired)``: :func:`regularize_covariances`' type-specific part."""
        raise NotImplementedError

    def per_covariance(self, flags, reduce=jnp.any):
        """Flags shaped like the log-diagonal of ``P`` reduced to one per covariance
        (``(K,)``, or ``()`` shared) with ``reduce`` (``jnp.any``/``jnp.all``) over features."""
        return reduce(flags, axis=-1) if self.has_feature_axis else flags

    # -- the unconstrained parametrisation (gmmjax._unconstrained)
    def raw_log_diagonal(self, raw):
        """The stored log-diagonal of a raw (log-diagonal) factor: ``(K, D)`` full/diag,
        ``(D,)`` tied, ``(K,)`` spherical."""
        raise NotImplementedError

    def with_raw_log_diagonal(self, raw, log_diagonal):
        """``raw`` with its stored log-diagonal replaced."""
        raise NotImplementedError

    def assemble_precision_cholesky(self, raw, diagonal):
        """``P`` from a raw factor and ``P``'s (positive) diagonal."""
        raise NotImplementedError

    def raw_from_precision_cholesky(self, prec_chol):
        """The raw factor (log-diagonal, for the matrix types the strictly upper triangle) of ``P``."""
        raise NotImplementedError

    def covariances_from_raw(self, raw, log_diagonal):
        """Covariances ``P⁻ᵀ P⁻¹`` (or ``exp(−2·log P)``) from a raw factor and its clipped log-diagonal."""
        raise NotImplementedError

    def log_det_from_log_diagonal(self, log_diagonal, num_features: int):
        """``log det P`` from its log-diagonal: ``(K,)``, or ``()`` shared."""
        return jnp.sum(log_diagonal, axis=-1)

    # -- the gradient fit's frame (gmmjax._gradient)
    def factor_inverse(self, factor):
        """``P⁻¹`` (upper triangular; ``1/P`` for variances)."""
        raise NotImplementedError

    def unstandardize_means(self, means, center, inverse):
        """``center + means · P⁻¹`` per component (means in the frame of factor ``P``)."""
        raise NotImplementedError

    def unstandardize_raw(self, raw, frame_factor, log_diagonal):
        """The raw factor in the data's coordinates: ``F · T`` for a raw ``T`` in the frame of
        ``F`` (log-diagonal ``log_diagonal``: the sum of both)."""
        raise NotImplementedError

    def pack_raw(self, raw):
        """The coordinates an optimizer sees of a raw factor (the used entries only)."""
        return raw

    def unpack_raw(self, packed, num_features: int):
        """Inverse of :meth:`pack_raw`."""
        return packed

    # -- sampling, plots and other libraries
    def sample_offsets(self, factor, onehot, noise):
        """``L_k z_n`` for each sample's component (``onehot`` ``(n, K)``, noise ``(n, D)``)."""
        raise NotImplementedError

    def sample_temporaries_per_row(self, num_components: int, num_features: int) -> int:
        """Floats per sample that :meth:`sample_offsets` holds beyond its ``(n, D)`` result."""
        return 0

    def dense(self, covariances, num_components: int, num_features: int, xp=jnp):
        """The covariances as ``(K, D, D)`` matrices (``xp=np``: NumPy in, NumPy out)."""
        raise NotImplementedError

    def component_scales(self, factor, means):
        """Cholesky factors ``(..., K, D, D)`` (matrix types) or scales ``(..., K, D)``, one per component."""
        return factor

    def sklearn_precision_cholesky(self, covariances: np.ndarray) -> np.ndarray:
        """scikit-learn's ``precisions_cholesky_`` from covariances, in float64 NumPy."""
        raise NotImplementedError

    def numpyro_components(self, ndist, means, scales):
        raise NotImplementedError

    def distrax_components(self, distrax, means, scales):
        raise NotImplementedError


class _MatrixKind(CovarianceKind):
    """Shared maths of the matrix types (full, tied): triangular precision factors."""

    matrix = True

    def cholesky_factor(self, covariances):
        return jnp.linalg.cholesky(covariances)

    def precision_cholesky(self, covariances):
        lower = jnp.linalg.cholesky(covariances)
        return jnp.swapaxes(solve_triangular(lower, _eye_like(covariances), lower=True), -1, -2)

    def covariances_from_precisions(self, precisions):
        lower = jnp.linalg.cholesky(precisions)
        inv_lower = solve_triangular(lower, _eye_like(precisions), lower=True)
        cov = jnp.swapaxes(inv_lower, -1, -2) @ inv_lower
        return 0.5 * (cov + jnp.swapaxes(cov, -1, -2))

    def precisions_from_precision_cholesky(self, prec_chol, xp=jnp):
        return prec_chol @ xp.swapaxes(prec_chol, -1, -2)

    def log_det_precision_cholesky(self, prec_chol, num_features: int):
        return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)

    def _per_component_factors(self, prec_chol):
        """``(K or 1, D, D)`` factors for the feature-by-feature path."""
        return prec_chol

    def whitened_squared_norms(self, residuals, prec_chol):
        num_features = residuals.shape[-1]
        if num_features <= SMALL_FEATURES:
            columns = _feature_columns(residuals)  # D × (K, N)
            factor = self._per_component_factors(prec_chol)
            total = 0.0
            for e in range(num_features):  # P is upper triangular: column e mixes features d <= e
                whitened_e = sum(columns[d] * factor[:, d, e][:, None] for d in range(e + 1))
                total = total + whitened_e * whitened_e
            return total
        whitened = jnp.matmul(residuals, prec_chol)  # (K,N,D) @ (K or 1,D,D): one batched GEMM
        return jnp.sum(whitened * whitened, axis=-1)

    def scatter(self, residuals, weighted_resp):
        num_features = residuals.shape[-1]
        if num_features <= SMALL_FEATURES:
            columns = _feature_columns(residuals)
            weighted = [column * weighted_resp for column in columns]
            entries = {
                (d, e): jnp.sum(weighted[d] * columns[e], axis=-1)
                for d in range(num_features)
                for e in range(d, num_features)
            }
            return jnp.stack(
                [
                    jnp.stack([entries[min(d, e), max(d, e)] for e in range(num_features)], axis=-1)
                    for d in range(num_features)
                ],
                axis=-2,
            )
        return jnp.matmul(jnp.swapaxes(residuals * weighted_resp[..., None], -1, -2), residuals)

    def variances(self, covariances):
        return jnp.diagonal(covariances, axis1=-2, axis2=-1)

    def second_order_features(self, centred):
        rows, cols = np.triu_indices(centred.shape[-1])
        return centred[:, rows] * centred[:, cols]

    def expanded_terms(self, prec_chol, covariances, offsets):
        num_features = offsets.shape[-1]
        factors = self._per_component_factors(prec_chol)  # (K or 1, D, D)
        precisions = factors @ jnp.swapaxes(factors, -1, -2)
        rows, cols = np.triu_indices(num_features)
        quadratic = precisions[:, rows, cols] * jnp.where(rows == cols, 1.0, 2.0).astype(precisions.dtype)[None, :]
        linear = jnp.matmul(precisions, offsets[:, :, None])[:, :, 0]  # Λ_k m_k (Λ shared: broadcast)
        constant = jnp.sum(offsets * linear, axis=-1)
        # Σ_ij |Λ_ij| (|m_i| + σ_i)(|m_j| + σ_j): the terms that cancel for points within a
        # standard deviation of the mean. Unlike a diagonal precision, |Λ| can be far larger
        # than Λ (correlated features): then the whitened residual form is the accurate one.
        spread = jnp.abs(offsets) + jnp.sqrt(jnp.maximum(self.variances(covariances), 0.0)).reshape(
            -1, offsets.shape[-1]
        )
        severity = jnp.sum(spread * jnp.matmul(jnp.abs(precisions), spread[:, :, None])[:, :, 0], axis=-1)
        return quadratic, linear, constant, severity

    def moments_from_features(self, packed):
        num_features = int(round((np.sqrt(8 * packed.shape[-1] + 1) - 1) / 2))
        upper = self.unpack_raw(packed, num_features)
        return upper + jnp.swapaxes(jnp.triu(upper, 1), -1, -2)

    def outer(self, a, b):
        return a[..., :, None] * b[..., None, :]

    def add_to_diagonal(self, covariances, value):
        return covariances + value * _eye_like(covariances)

    def repair(self, cov, floor, finite_variances):
        eps = jnp.finfo(cov.dtype).eps
        reference = jnp.maximum(finite_variances, floor)
        lower = jnp.linalg.cholesky(cov)
        pivots = jnp.diagonal(lower, axis1=-2, axis2=-1) ** 2  # variance not explained by earlier features
        ok = jnp.all(jnp.isfinite(lower), axis=(-2, -1)) & jnp.all(pivots > 10 * eps * reference, axis=-1)
        eye = _eye_like(cov)
        repaired = cov + (_JITTER_EPS * eps * reference)[..., None, :] * eye
        # Last resort (non-finite moments): independent features at the reference variances.
        fallback = reference[..., None, :] * eye
        repaired_ok = jnp.all(jnp.isfinite(jnp.linalg.cholesky(repaired)), axis=(-2, -1))
        repaired = jnp.where(repaired_ok[..., None, None], repaired, fallback)
        return jnp.where(ok[..., None, None], cov, repaired), ~ok

    def raw_log_diagonal(self, raw):
        return jnp.diagonal(raw, axis1=-2, axis2=-1)

    def with_raw_log_diagonal(self, raw, log_diagonal):
        return _on_diagonal(raw, log_diagonal, raw)

    def assemble_precision_cholesky(self, raw, diagonal):
        return _on_diagonal(raw, diagonal, jnp.triu(raw, 1))

    def raw_from_precision_cholesky(self, prec_chol):
        log_diagonal = jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1))
        return _on_diagonal(prec_chol, log_diagonal, jnp.triu(prec_chol, 1))

    def covariances_from_raw(self, raw, log_diagonal):
        prec_chol = self.assemble_precision_cholesky(raw, jnp.exp(log_diagonal))
        eye = jnp.broadcast_to(jnp.eye(prec_chol.shape[-1], dtype=prec_chol.dtype), prec_chol.shape)
        inverse = solve_triangular(prec_chol, eye, lower=False)  # P⁻¹, upper triangular
        covariances = jnp.swapaxes(inverse, -1, -2) @ inverse
        return 0.5 * (covariances + jnp.swapaxes(covariances, -1, -2))

    def factor_inverse(self, factor):
        eye = jnp.broadcast_to(jnp.eye(factor.shape[-1], dtype=factor.dtype), factor.shape)
        return solve_triangular(factor, eye, lower=False)

    def unstandardize_raw(self, raw, frame_factor, log_diagonal):
        # T itself (no clip: the projection of the fit keeps its diagonal in range); only the
        # strictly upper part of F·T is kept, its log-diagonal is the sum of the logs.
        fitted = _on_diagonal(raw, jnp.exp(self.raw_log_diagonal(raw)), jnp.triu(raw, 1))
        return self.with_raw_log_diagonal(frame_factor @ fitted, log_diagonal)

    def pack_raw(self, raw):
        rows, cols = np.triu_indices(raw.shape[-1])
        return raw[..., rows, cols]

    def unpack_raw(self, packed, num_features: int):
        rows, cols = np.triu_indices(num_features)
        square = jnp.zeros(packed.shape[:-1] + (num_features, num_features), packed.dtype)
        return square.at[..., rows, cols].set(packed)

    def sklearn_precision_cholesky(self, covariances: np.ndarray) -> np.ndarray:
        from scipy.linalg import solve_triangular as np_solve_triangular  # scikit-learn depends on scipy

        matrices = covariances.reshape((-1,) + covariances.shape[-2:])
        eye = np.eye(covariances.shape[-1])
        factors = [np_solve_triangular(np.linalg.cholesky(c), eye, lower=True).T for c in matrices]
        return np.stack(factors).reshape(covariances.shape)

    def numpyro_components(self, ndist, means, scales):
        return ndist.MultivariateNormal(means, scale_tril=scales)

    def distrax_components(self, distrax, means, scales):
        return distrax.MultivariateNormalTri(means, scale_tri=scales)


class _DiagonalKind(CovarianceKind):
    """Shared maths of the variance types (diag, spherical): ``P = 1/σ``."""

    def cholesky_factor(self, covariances):
        return jnp.sqrt(covariances)

    def precision_cholesky(self, covariances):
        return jax.lax.rsqrt(covariances)

    def covariances_from_precisions(self, precisions):
        return 1.0 / precisions

    def precisions_from_precision_cholesky(self, prec_chol, xp=jnp):
        return prec_chol**2

    def scatter(self, residuals, weighted_resp):
        return jnp.einsum("kn,knd->kd", weighted_resp, residuals * residuals)

    def second_order_features(self, centred):
        return centred * centred

    def expanded_terms(self, prec_chol, covariances, offsets):
        precisions = self.diagonal_precisions(prec_chol, offsets.shape[-1])
        linear = offsets * precisions
        constant = jnp.sum(offsets * linear, axis=-1)
        # A diagonal precision has no terms of mixed sign: the cancellation is that of the
        # offset itself, m_kᵀ Λ_k m_k (a point's own spread adds at most D + 2·sqrt(D·c)).
        return precisions, linear, constant, constant

    def moments_from_features(self, packed):
        return packed

    def outer(self, a, b):
        return a * b

    def _feature_variances(self, second_moments, counts, mean_offsets):
        return second_moments / counts[:, None] - mean_offsets**2

    def variances(self, covariances):
        return covariances

    def add_to_diagonal(self, covariances, value):
        return covariances + value

    def repair(self, cov, floor, finite_variances):
        ok = jnp.isfinite(cov) & (cov > floor)
        repaired = jnp.where(ok, cov, floor)
        return repaired, ~self.per_covariance(ok, jnp.all)

    def raw_log_diagonal(self, raw):
        return raw

    def with_raw_log_diagonal(self, raw, log_diagonal):
        return log_diagonal

    def assemble_precision_cholesky(self, raw, diagonal):
        return diagonal

    def raw_from_precision_cholesky(self, prec_chol):
        return jnp.log(prec_chol)

    def covariances_from_raw(self, raw, log_diagonal):
        return jnp.exp(-2.0 * log_diagonal)

    def factor_inverse(self, factor):
        return 1.0 / factor

    def unstandardize_raw(self, raw, frame_factor, log_diagonal):
        return log_diagonal

    def sklearn_precision_cholesky(self, covariances: np.ndarray) -> np.ndarray:
        return 1.0 / np.sqrt(covariances)

    def numpyro_components(self, ndist, means, scales):
        return ndist.Normal(means, scales).to_event(1)

    def distrax_components(self, distrax, means, scales):
        return distrax.MultivariateNormalDiag(means, scale_diag=scales)


class Full(_MatrixKind):
    """``(K, D, D)``: one covariance matrix per component."""

    name = "full"
    component_ndim = 2

    def shape(self, num_components, num_features):
        return (num_components, num_features, num_features)

    def num_parameters(self, num_components, num_features):
        return num_components * num_features * (num_features + 1) // 2

    def covariances_from_moments(self, second_moments, counts, mean_offsets):
        cov = second_moments / counts[:, None, None] - mean_offsets[:, :, None] * mean_offsets[:, None, :]
        return 0.5 * (cov + jnp.swapaxes(cov, -1, -2))

    def unstandardize_means(self, means, center, inverse):
        return center + jnp.einsum("kd,kde->ke", means, inverse)

    def sample_offsets(self, factor, onehot, noise):
        transformed = jnp.einsum("kde,ne->knd", factor, noise)  # (K, n, D)
        return jnp.einsum("nk,knd->nd", onehot, transformed)

    def sample_temporaries_per_row(self, num_components, num_features):
        return num_components * num_features  # the (K, n, D) transformed draws

    def dense(self, covariances, num_components, num_features, xp=jnp):
        return covariances


class Tied(_MatrixKind):
    """``(D, D)``: one covariance matrix shared by all components."""

    name = "tied"
    shared = True
    component_ndim = None

    def shape(self, num_components, num_features):
        return (num_features, num_features)

    def num_parameters(self, num_components, num_features):
        return num_features * (num_features + 1) // 2

    def _per_component_factors(self, prec_chol):
        return jnp.broadcast_to(prec_chol, (1,) + prec_chol.shape)

    def components(self, prec_chol, index):
        return prec_chol

    def covariances_from_moments(self, second_moments, counts, mean_offsets):
        within = second_moments - counts[:, None, None] * mean_offsets[:, :, None] * mean_offsets[:, None, :]
        cov = jnp.sum(within, axis=0) / jnp.sum(counts)
        return 0.5 * (cov + cov.T)

    def largest_and_range(self, finite_variances, mean_range):  # (D,) variances shared by all components
        return finite_variances, mean_range[0]

    def unstandardize_means(self, means, center, inverse):
        return center + means @ inverse

    def sample_offsets(self, factor, onehot, noise):
        return noise @ factor.T

    def dense(self, covariances, num_components, num_features, xp=jnp):
        return xp.array(xp.broadcast_to(covariances, (num_components, num_features, num_features)))

    def component_scales(self, factor, means):  # (..., D, D) shared by all components
        return jnp.broadcast_to(factor[..., None, :, :], means.shape + means.shape[-1:])


class Diag(_DiagonalKind):
    """``(K, D)``: one variance per component and feature."""

    name = "diag"
    component_ndim = 1

    def shape(self, num_components, num_features):
        return (num_components, num_features)

    def num_parameters(self, num_components, num_features):
        return num_components * num_features

    def log_det_precision_cholesky(self, prec_chol, num_features: int):
        return jnp.sum(jnp.log(prec_chol), axis=-1)

    def whitened_squared_norms(self, residuals, prec_chol):
        whitened = residuals * prec_chol[:, None, :]
        return jnp.sum(whitened * whitened, axis=-1)

    def diagonal_precisions(self, prec_chol, num_features: int):
        return prec_chol**2

    def covariances_from_moments(self, second_moments, counts, mean_offsets):
        return self._feature_variances(second_moments, counts, mean_offsets)

    def unstandardize_means(self, means, center, inverse):
        return center + means * inverse

    def sample_offsets(self, factor, onehot, noise):
        return noise * (onehot @ factor)

    def dense(self, covariances, num_components, num_features, xp=jnp):
        return covariances[:, :, None] * xp.eye(num_features, dtype=covariances.dtype)[None]


class Spherical(_DiagonalKind):
    """``(K,)``: one variance per component, the same for every feature."""

    name = "spherical"
    component_ndim = 0
    has_feature_axis = False

    def shape(self, num_components, num_features):
        return (num_components,)

    def num_parameters(self, num_components, num_features):
        return num_components

    def log_det_precision_cholesky(self, prec_chol, num_features: int):
        return num_features * jnp.log(prec_chol)

    def whitened_squared_norms(self, residuals, prec_chol):
        return jnp.sum(residuals * residuals, axis=-1) * (prec_chol**2)[:, None]

    def diagonal_precisions(self, prec_chol, num_features: int):
        squared = prec_chol**2
        return jnp.broadcast_to(squared[:, None], (squared.shape[0], num_features))

    def covariances_from_moments(self, second_moments, counts, mean_offsets):
        return jnp.mean(self._feature_variances(second_moments, counts, mean_offsets), axis=-1)

    def largest_and_range(self, finite_variances, mean_range):  # one variance per component: one spread
        return jnp.max(finite_variances), jnp.max(mean_range)

    def log_det_from_log_diagonal(self, log_diagonal, num_features: int):
        return num_features * log_diagonal

    def unstandardize_means(self, means, center, inverse):
        return center + means * inverse[:, None]

    def sample_offsets(self, factor, onehot, noise):
        return noise * (onehot @ factor)[:, None]

    def dense(self, covariances, num_components, num_features, xp=jnp):
        return covariances[:, None, None] * xp.eye(num_features, dtype=covariances.dtype)[None]

    def component_scales(self, factor, means):  # (..., K) one scale for all features
        return jnp.broadcast_to(factor[..., None], means.shape)


COVARIANCE_KINDS = {kind.name: kind for kind in (Full(), Tied(), Diag(), Spherical())}


def covariance_kind(covariance_type: str) -> CovarianceKind:
    """The :class:`CovarianceKind` of a covariance type's name (``"full"``, ...)."""
    try:
        return COVARIANCE_KINDS[covariance_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"covariance_type must be one of {tuple(COVARIANCE_KINDS)}, got {covariance_type!r}."
        ) from None


# --------------------------------------------------------------------------- shared by every type


def precision_cholesky(covariances: jax.Array, covariance_type: str) -> jax.Array:
    """Precision Cholesky factor of ``covariances``, same shape (scikit-learn's ``precisions_cholesky_``)."""
    return covariance_kind(covariance_type).precision_cholesky(covariances)


def weighted_sums(residuals: jax.Array, weighted_resp: jax.Array) -> jax.Array:
    """``Σ_n r_kn (x_n − c_k)`` for residuals ``(K, N, D)`` and weights ``(K, N)``: ``(K, D)``."""
    if residuals.shape[-1] <= SMALL_FEATURES:
        return jnp.stack([jnp.sum(column * weighted_resp, axis=-1) for column in _feature_columns(residuals)], axis=-1)
    return jnp.einsum("kn,knd->kd", weighted_resp, residuals)


def regularize_covariances(covariances: jax.Array, reg_covar: jax.Array, covariance_type: str, means: jax.Array):
    """Adds ``reg_covar`` to the diagonal and guarantees a factorisable covariance.

    Two things can still break the Cholesky factor in the working precision: a feature
    that is a linear combination of the others within round-off (collinear data, a
    component collapsed onto a point or a line with ``reg_covar=0``), and a variance so
    small that its precision overflows. Such a covariance gets ``1e3·eps`` of each feature's
    own variance added to its diagonal (scale-invariant), and no variance may fall below
    ``10·eps²`` times the spread of the fit in that feature (the largest variance plus the
    squared range of the means) nor below ``sqrt(tiny)``, which keeps every whitened
    residual finite. This runs
    inside the jitted loop; healthy covariances are returned unchanged.

    Args:
      covariances: unregularised covariances in scikit-learn's shape for the type.
      reg_covar: scalar added to the diagonal.
      covariance_type: the covariance type.
      means: ``(K, D)`` the component means (they set the spread of the fit).

    Returns:
      ``(covariances, repaired)``: the regularised covariances and a boolean per covariance
      (``(K,)``, or ``()`` for tied) that is true where the repair was needed.
    """
    kind = covariance_kind(covariance_type)
    eps = jnp.finfo(covariances.dtype).eps
    cov = kind.add_to_diagonal(covariances, reg_covar)

    variances = kind.variances(cov)
    finite_variances = jnp.where(jnp.isfinite(variances), variances, 0.0)
    mean_range = jnp.ptp(means, axis=0, keepdims=True)  # (1, D)
    largest, mean_range = kind.largest_and_range(finite_variances, mean_range)
    spread = largest + jnp.where(jnp.isfinite(mean_range), mean_range, 0.0) ** 2
    # sqrt(tiny) keeps the floor a normal number (XLA flushes subnormals to zero) whose
    # reciprocal cannot overflow, for data whose spread is zero or itself tiny.
    floor = jnp.maximum(10 * eps**2 * spread, jnp.sqrt(jnp.finfo(cov.dtype).tiny))
    return kind.repair(cov, floor, finite_variances)
