"""Pictures of mixtures and fits, with matplotlib (an optional extra: ``pip install "gmmjax[plots]"``).

``import gmmjax`` never imports this module or matplotlib; ``import gmmjax.plot`` does.

* :func:`plot_mixture`: data coloured by component, covariance ellipses and means (2-D data
  directly; otherwise the first two principal axes of the data).
* :func:`plot_lower_bounds`: the EM lower-bound history of every restart, the best highlighted.
* :func:`plot_criteria`: BIC / AIC / ICL over the number of components, the minima marked.
* :func:`plot_selection`: the same curves straight from a :class:`~gmmjax.SelectionResult` (or
  from a model returned by :meth:`GaussianMixtureModel.select <gmmjax.GaussianMixtureModel.select>`).

Every function draws on ``ax`` when given (else on a new figure) and returns the Axes. The
artists carry ``gid`` tags (``"gmmjax-data"``, ``"gmmjax-ellipse"``, ``"gmmjax-mean"``,
``"gmmjax-restart"``, ``"gmmjax-minimum"``...) so that code and tests can find them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

try:
    import matplotlib
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'gmmjax.plot needs matplotlib, an optional extra: pip install "gmmjax[plots]" (or pip install matplotlib).'
    ) from exc

import matplotlib.lines as mlines
import matplotlib.patches as mpatches
import matplotlib.patheffects as patheffects
import numpy as np
from matplotlib.ticker import MaxNLocator

from gmmjax import _validation as v
from gmmjax._covariance import covariance_kind
from gmmjax._driver import FitResult
from gmmjax._estimator import GaussianMixtureModel, _responsibilities
from gmmjax._model_selection import CRITERIA, SelectionResult
from gmmjax._params import GMMParams

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType  # matplotlib >= 3.8; only read by the type checker

__all__ = ["plot_mixture", "plot_lower_bounds", "plot_criteria", "plot_selection", "ellipse_geometry"]

# Ellipse line styles for successive ``n_std`` levels (the innermost solid).
_LEVEL_STYLES: tuple[LineStyleType, ...] = ("-", "--", ":", "-.")


def _new_axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # only here: choosing a backend is the caller's business otherwise

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _component_colors(num_colors: int) -> list:
    """Distinct colours: ``tab10`` up to 10, ``tab20`` up to 20, then a continuous colormap."""
    if num_colors <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(num_colors)]
    if num_colors <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(num_colors)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(x) for x in np.linspace(0.05, 0.95, num_colors)]


# --------------------------------------------------------------------------- mixtures


def _mixture_params(model_or_params) -> GMMParams:
    if isinstance(model_or_params, GMMParams):
        params = model_or_params
    elif isinstance(model_or_params, GaussianMixtureModel):
        params = model_or_params._fitted_params("plot_mixture")
    else:
        raise ValueError(
            f"plot_mixture needs a fitted GaussianMixtureModel or a GMMParams, got {type(model_or_params).__name__}."
        )
    if np.ndim(params.means) != 2:
        raise ValueError(
            f"plot_mixture draws one mixture: means must be (K, D), got shape {np.shape(params.means)} "
            "(select one set of batched parameters first, e.g. with jax.tree_util.tree_map)."
        )
    return params


def _full_covariances(params: GMMParams) -> np.ndarray:
    """The covariance of every component as a ``(K, D, D)`` float64 NumPy array, whatever the type."""
    cov = np.asarray(params.covariances, np.float64)
    return covariance_kind(params.covariance_type).dense(cov, params.num_components, params.num_features, xp=np)


def _principal_axes(covariance: np.ndarray):
    """The two leading eigenvectors ``(D, 2)`` of a covariance and the fraction of variance of each.

    Each axis is signed so that its largest entry is positive (a deterministic orientation).
    """
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:2]
    axes = eigenvectors[:, order]
    largest = np.argmax(np.abs(axes), axis=0)
    axes = axes * np.sign(axes[largest, np.arange(2)])
    explained = eigenvalues[order] / max(float(np.sum(eigenvalues)), np.finfo(np.float64).tiny)
    return axes, explained


def ellipse_geometry(covariance, n_std: float = 1.0):
    """Width, height and angle (degrees) of the contour ``(x−μ)ᵀ Σ⁻¹ (x−μ) = n_std²`` of a 2×2 covariance.

    With ``Σ = V diag(λ₁ ≥ λ₂) Vᵀ``: ``width = 2·n_std·√λ₁`` along the first eigenvector,
    ``height = 2·n_std·√λ₂``, ``angle`` = direction of the first eigenvector (matplotlib's
    :class:`~matplotlib.patches.Ellipse` arguments).

    >>> import numpy as np
    >>> [round(float(x), 6) for x in ellipse_geometry(np.array([[4.0, 0.0], [0.0, 1.0]]), 2.0)]
    [8.0, 4.0, 0.0]
    """
    covariance = np.asarray(covariance, np.float64)
    if covariance.shape != (2, 2):
        raise ValueError(f"ellipse_geometry needs a 2x2 covariance, got shape {covariance.shape}.")
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (covariance + covariance.T))
    eigenvalues = np.clip(eigenvalues, 0.0, None)  # round-off on a (near-)singular covariance
    major = eigenvectors[:, 1]
    angle = np.degrees(np.arctan2(major[1], major[0]))
    angle = (angle + 90.0) % 180.0 - 90.0  # an axis, not a direction: keep it in [-90, 90)
    return 2.0 * n_std * np.sqrt(eigenvalues[1]), 2.0 * n_std * np.sqrt(eigenvalues[0]), angle


def plot_mixture(
    model_or_params,
    X=None,
    ax=None,
    labels=None,
    *,
    n_std: Sequence[float] = (1.0, 2.0),
    max_points: int | None = 20_000,
    legend: bool = True,
    figsize=(6.4, 5.2),
):
    """Data coloured by component, with covariance ellipses and the component means.

    Data with two features is drawn as is. With more, everything is projected on the first
    two principal axes ``W`` ``(D, 2)`` of the data (of the mixture's own covariance when
    ``X`` is not given): points ``(x − c) W``, means ``(μ − c) W`` and covariances ``Wᵀ Σ W``,
    so each ellipse is the exact contour of the projected (marginal) Gaussian.

    Args:
      model_or_params: a fitted :class:`~gmmjax.GaussianMixtureModel` or a :class:`~gmmjax.GMMParams`
        (any covariance type) of one mixture.
      X: optional ``(N, D)`` data to scatter.
      ax: matplotlib Axes to draw on; ``None`` makes a new figure.
      labels: optional ``(N,)`` integer labels colouring the points (e.g. the true components;
        label ``k`` gets component ``k``'s colour); by default each point gets the colour of its
        most probable component (the model's ``predict``).
      n_std: Mahalanobis radii of the ellipses drawn per component (1 and 2 standard
        deviations by default: about 39% and 86% of a 2-D Gaussian's mass).
      max_points: at most this many points are drawn (a fixed random subset, so the picture
        stays fast and readable for large ``N``); ``None`` draws all.
      legend: draw a legend (component colours and weights, ellipse levels).
      figsize: size of a new figure (ignored when ``ax`` is given).

    Returns:
      The matplotlib Axes.

    Raises:
      ValueError: the model is not fitted, the data do not match it, ``labels`` has the wrong
        length, or ``n_std`` is not positive.

    >>> import numpy as np, gmmjax as gj
    >>> from gmmjax.plot import plot_mixture
    >>> params = gj.GMMParams(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [3.0, 3.0]]),
    ...                       np.array([1.0, 0.5]), covariance_type="spherical")
    >>> ax = plot_mixture(params)
    >>> len([p for p in ax.patches if p.get_gid() == "gmmjax-ellipse"])  # 2 components x 2 levels
    4
    """
    params = _mixture_params(model_or_params)
    num_components, num_features = params.num_components, params.num_features
    if num_features < 2:
        raise ValueError(
            "plot_mixture needs at least 2 features; for 1-D data plot a histogram and "
            "exp(gmmjax.log_prob(params, x)) instead."
        )
    levels = [float(s) for s in np.atleast_1d(np.asarray(n_std, np.float64))]
    if not levels or not all(np.isfinite(s) and s > 0 for s in levels):
        raise ValueError(f"n_std must be positive numbers of standard deviations, got {n_std!r}.")
    if max_points is not None:
        max_points = v.check_int("max_points", max_points, 1)

    weights = np.asarray(params.weights, np.float64)
    means = np.asarray(params.means, np.float64)
    covariances = _full_covariances(params)

    data = None
    if X is not None:
        X_checked = v.check_data(X, "X", num_features=num_features)
        data = np.asarray(X_checked, np.float64)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"labels must be {data.shape[0]} integers (one per row of X), got "
                    f"shape {labels.shape} and dtype {labels.dtype}."
                )
        if max_points is not None and data.shape[0] > max_points:
            shown = np.sort(np.random.default_rng(0).choice(data.shape[0], max_points, replace=False))
            data, X_checked = data[shown], X_checked[shown]
            labels = None if labels is None else labels[shown]
        if labels is None:
            dtype = v.working_dtype(params.dtype)  # float64 only when jax_enable_x64 is on
            resp = _responsibilities(params, X_checked.astype(dtype), chunk_size=None)
            labels = np.argmax(np.asarray(resp), axis=1)
    elif labels is not None:
        raise ValueError("labels colour the points of X: pass X too.")

    # Projection: the identity for 2-D data, else the data's (or the mixture's) principal axes.
    if num_features == 2:
        center, axes = np.zeros(2), np.eye(2)
        axis_names: tuple[str, ...] = ("feature 0", "feature 1")
    else:
        if data is not None:
            center = np.mean(data, axis=0)
            total_covariance = np.cov(data, rowvar=False)
        else:  # the mixture's own mean and covariance (law of total covariance)
            center = weights @ means
            offsets = means - center
            total_covariance = np.einsum("k,kde->de", weights, covariances) + (weights * offsets.T) @ offsets
        axes, explained = _principal_axes(total_covariance)
        axis_names = tuple(f"principal axis {i + 1} ({100 * e:.0f}% of variance)" for i, e in enumerate(explained))
    means_2d = (means - center) @ axes
    covariances_2d = np.einsum("di,kde,ej->kij", axes, covariances, axes)

    ax = _new_axes(ax, figsize)
    colors = _component_colors(num_components)
    if data is not None:
        points = (data - center) @ axes
        num_label_colors = max(num_components, int(labels.max()) + 1) if labels.size else num_components
        label_colors = _component_colors(num_label_colors)
        point_colors = [label_colors[int(label) % len(label_colors)] for label in labels]
        # Smaller, fainter dots for more points, so that dense regions do not saturate.
        size = float(np.clip(3000.0 / max(len(points), 1), 2.0, 20.0))
        alpha = float(np.clip(1000.0 / max(len(points), 1), 0.15, 0.6))
        ax.scatter(
            points[:, 0], points[:, 1], s=size, c=point_colors, alpha=alpha, linewidths=0, gid="gmmjax-data", zorder=1
        )
    for k in range(num_components):
        for level_index, level in enumerate(levels):
            width, height, angle = ellipse_geometry(covariances_2d[k], level)
            linewidth = 2.0 if level_index == 0 else 1.4
            ellipse = mpatches.Ellipse(
                means_2d[k],
                width,
                height,
                angle=angle,
                fill=False,
                edgecolor=colors[k],
                linewidth=linewidth,
                linestyle=_LEVEL_STYLES[level_index % len(_LEVEL_STYLES)],
                gid="gmmjax-ellipse",
                zorder=3,
            )
            # A white halo keeps the ellipse visible over points of its own colour.
            ellipse.set_path_effects(
                [patheffects.Stroke(linewidth=linewidth + 1.6, foreground="white", alpha=0.8), patheffects.Normal()]
            )
            ax.add_patch(ellipse)
    ax.scatter(
        means_2d[:, 0],
        means_2d[:, 1],
        s=90,
        c=colors,
        marker="X",
        edgecolors="black",
        linewidths=1.0,
        gid="gmmjax-mean",
        zorder=4,
    )
    ax.autoscale_view()

    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(f"{num_components}-component mixture ({params.covariance_type} covariances)")
    # Equal scales show the ellipses undistorted, unless the two ranges differ too much for that.
    x_range, y_range = np.ptp(ax.get_xlim()), np.ptp(ax.get_ylim())
    if 0.1 < x_range / max(y_range, np.finfo(np.float64).tiny) < 10.0:
        ax.set_aspect("equal", adjustable="datalim")
    if legend:
        handles = [
            mlines.Line2D(
                [],
                [],
                color=colors[k],
                marker="o",
                linestyle="",
                markersize=7,
                label=f"component {k}: weight {weights[k]:.2f}",
            )
            for k in range(num_components)
        ]
        handles += [
            mlines.Line2D(
                [],
                [],
                color="0.3",
                linestyle=_LEVEL_STYLES[i % len(_LEVEL_STYLES)],
                label=f"{level:g} standard deviation{'s' if level != 1 else ''}",
            )
            for i, level in enumerate(levels)
        ]
        handles.append(
            mlines.Line2D(
                [], [], color="white", marker="X", markeredgecolor="black", markersize=9, linestyle="", label="means"
            )
        )
        if num_components <= 6:
            ax.legend(handles=handles, loc="best", fontsize="small", framealpha=0.85)
        else:  # a long legend would hide the data: beside the plot instead
            ax.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                borderaxespad=0.0,
                fontsize="small",
                ncol=1 if num_components <= 16 else 2,
            )
    return ax


# --------------------------------------------------------------------------- lower bounds


def plot_lower_bounds(result_or_model, ax=None, *, figsize=(6.4, 4.2)):
    """The mean log-likelihood (EM's lower bound) at each iteration of every restart.

    Args:
      result_or_model: a :class:`~gmmjax.FitResult` (all restarts: ``lower_bound_history``
        ``(R, T)``, NaN after each restart's last iteration) or a fitted
        :class:`~gmmjax.GaussianMixtureModel` (all restarts of its fit; a loaded model keeps
        only its best restart's history).
      ax: matplotlib Axes to draw on; ``None`` makes a new figure.
      figsize: size of a new figure (ignored when ``ax`` is given).

    Returns:
      The matplotlib Axes: one line per restart (iterations 1…n_iter; the NaN tail is not
      drawn), the best restart highlighted, the end of each marked ``o`` when it converged
      and ``x`` when it stopped at the iteration limit.
    """
    if isinstance(result_or_model, FitResult):
        history = np.asarray(result_or_model.lower_bound_history, np.float64)
        best = int(result_or_model.best_restart)
        converged = np.asarray(result_or_model.restart_converged, bool)
    elif isinstance(result_or_model, GaussianMixtureModel):
        result_or_model._fitted_params("plot_lower_bounds")
        if "fit_result_" in result_or_model.__dict__:
            return plot_lower_bounds(result_or_model.fit_result_, ax, figsize=figsize)
        history = np.asarray(result_or_model.lower_bounds_, np.float64)[None]  # a loaded model: best restart only
        best, converged = 0, np.array([bool(result_or_model.converged_)])
    else:
        raise ValueError(
            "plot_lower_bounds needs a FitResult (from gmmjax.fit_em) or a fitted "
            f"GaussianMixtureModel, got {type(result_or_model).__name__}."
        )
    if history.ndim != 2:
        raise ValueError(
            f"lower_bound_history must be (restarts, iterations), got shape {history.shape} "
            "(a batch of fits: plot one at a time)."
        )
    num_restarts = history.shape[0]

    ax = _new_axes(ax, figsize)
    order = [r for r in range(num_restarts) if r != best] + [best]  # the best one drawn last, on top
    for r in order:
        finite = np.isfinite(history[r])
        # NaN after the restart's last iteration: draw the finite run before it only.
        curve = history[r, : len(finite) if finite.all() else int(np.argmin(finite))]
        iterations = np.arange(1, len(curve) + 1)
        is_best = r == best
        # "_"-prefixed labels stay out of the legend (built below) but name each line's restart.
        (line,) = ax.plot(
            iterations,
            curve,
            color="C3" if is_best else "0.55",
            linewidth=2.2 if is_best else 1.0,
            alpha=1.0 if is_best else 0.7,
            label=f"_restart {r}",
            gid="gmmjax-restart",
            zorder=3 if is_best else 2,
        )
        if len(curve):
            ax.plot(
                iterations[-1:],
                curve[-1:],
                linestyle="",
                marker="o" if converged[r] else "x",
                color=line.get_color(),
                markersize=6 if is_best else 4,
                gid="gmmjax-restart-end",
                zorder=line.get_zorder(),
            )
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood (lower bound)")
    ax.set_title(f"Lower bound of {num_restarts} restart{'s' if num_restarts != 1 else ''}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="y", useOffset=False)  # flat histories: plain values, not "1e-7 + -5.99"
    ax.grid(alpha=0.3)
    handles = [mlines.Line2D([], [], color="C3", linewidth=2.2, label=f"best restart ({best})")]
    if num_restarts > 1:
        handles.append(mlines.Line2D([], [], color="0.55", linewidth=1.0, label="other restarts"))
    ended = {bool(converged[r]) for r in range(num_restarts) if np.isfinite(history[r, 0])}
    handles += [
        mlines.Line2D([], [], color="0.3", marker=marker, linestyle="", label=label)
        for flag, marker, label in ((True, "o", "converged"), (False, "x", "stopped at the iteration limit"))
        if flag in ended
    ]
    ax.legend(handles=handles, loc="best", fontsize="small")
    return ax


# --------------------------------------------------------------------------- information criteria


def _name_minima(ax, ks, values: Mapping) -> None:
    """Writes the criterion's name next to each minimum star (the stars of several types share a
    colour). A label goes under its star (a minimum's own curve lies above it on both sides), or
    above it when another star sits just below at the same K; stars drawn on the same spot
    (ICL = BIC when the clusters do not overlap) share one label, "BIC, ICL"."""
    minima: list[tuple[str, int, float]] = []  # (name, j, y)
    for name, arr in values.items():
        if not np.all(np.isnan(arr)):
            t_min, j_min = np.unravel_index(np.nanargmin(arr), arr.shape)
            minima.append((name, int(j_min), float(arr[t_min, j_min])))
    if not minima:
        return
    low, high = ax.get_ylim()
    ax.set_ylim(low - 0.08 * (high - low), high)  # room for the labels under the lowest stars
    # Distances in points on the figure, where the labels live (the scale of the axes as drawn now).
    points_per_unit = abs(ax.transData.transform((0, 1))[1] - ax.transData.transform((0, 0))[1]) * 72 / ax.figure.dpi
    spots: list[tuple[int, float, list[str]]] = []  # (j, y, names)
    for name, j, y in minima:
        same = next((spot for spot in spots if spot[0] == j and abs(spot[1] - y) * points_per_unit < 5), None)
        if same is None:
            spots.append((j, y, [name]))
        else:
            same[2].append(name)
    label_room = 24  # points: half a star and a line of small text
    for j, y, names in spots:
        close = [
            other_y
            for other_j, other_y, _ in spots
            if other_j == j and other_y != y and abs(other_y - y) * points_per_unit < label_room
        ]
        side = (
            "under"
            if not any(other_y < y for other_y in close)
            else "over"
            if not any(other_y > y for other_y in close)
            else "beside"
        )
        # Flush with the star's side at either end of the x axis, so that the text stays inside the axes.
        ha = "left" if j == 0 else "right" if j == ks.size - 1 else "center"
        dx = {"left": -6, "right": 6, "center": 0}[ha]
        if side == "beside":
            ha, dx = ("right", -12) if j == ks.size - 1 else ("left", 12)
        dy, va = {"under": (-13, "top"), "over": (13, "bottom"), "beside": (0, "center")}[side]
        ax.annotate(
            ", ".join(names),
            (ks[j], y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize="small",
            gid="gmmjax-minimum-label",
            zorder=6,
            bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.6),
        )


def plot_criteria(
    num_components, criteria: Mapping, covariance_types: Sequence[str] | None = None, ax=None, *, figsize=None
):
    """Information criteria (BIC, AIC, ICL...) over the number of components, minima marked.

    Args:
      num_components: ``(J,)`` numbers of components ``K`` (the x axis).
      criteria: a mapping name → values, each ``(J,)`` or ``(T, J)`` (one row per covariance
        type); NaN or infinite values (fits that were not possible) are left out.
      covariance_types: the ``T`` names of the rows, required when the values are 2-D.
      ax: matplotlib Axes to draw on; ``None`` makes a new figure.
      figsize: size of a new figure (ignored when ``ax`` is given); by default wider when
        there are several covariance types, whose legend goes to the right of the plot.

    Returns:
      The matplotlib Axes: one line per criterion (and covariance type) and, per criterion, a
      star at its minimum over all ``(type, K)``, named in the legend and next to the star.

    >>> import numpy as np
    >>> from gmmjax.plot import plot_criteria
    >>> ax = plot_criteria([1, 2, 3], {"BIC": np.array([30.0, 10.0, 12.0])})
    >>> [star.get_xydata().tolist() for star in ax.lines if star.get_gid() == "gmmjax-minimum"]
    [[[2.0, 10.0]]]
    """
    ks = np.asarray(num_components)
    if ks.ndim != 1 or ks.size == 0 or not np.issubdtype(ks.dtype, np.number):
        raise ValueError(f"num_components must be a non-empty 1-D sequence of numbers, got shape {ks.shape}.")
    if not isinstance(criteria, Mapping) or not criteria:
        raise ValueError("criteria must be a non-empty mapping name -> values, e.g. {'BIC': bic, 'AIC': aic}.")
    values = {}
    for name, value in criteria.items():
        arr = np.asarray(value, np.float64)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != ks.size:
            raise ValueError(
                f"criteria[{name!r}] must have shape ({ks.size},) or (num_types, {ks.size}) to match "
                f"num_components, got {np.shape(value)}."
            )
        values[name] = np.where(np.isfinite(arr), arr, np.nan)
    num_rows = {arr.shape[0] for arr in values.values()}
    if len(num_rows) != 1:
        raise ValueError(f"all criteria must have the same number of rows (covariance types), got {sorted(num_rows)}.")
    (num_rows,) = num_rows
    if covariance_types is None:
        if num_rows > 1:
            raise ValueError(f"the criteria have {num_rows} rows: pass covariance_types, one name per row.")
        row_names: list[str | None] = [None]
    else:
        row_names = [
            str(name) for name in ([covariance_types] if isinstance(covariance_types, str) else covariance_types)
        ]
        if len(row_names) != num_rows:
            raise ValueError(f"covariance_types has {len(row_names)} names for {num_rows} rows of criteria.")

    ax = _new_axes(ax, figsize or ((6.4, 4.4) if num_rows == 1 else (8.0, 4.4)))
    markers = ("o", "s", "^", "D", "v")
    styles: tuple[LineStyleType, ...] = ("-", "--", ":", "-.")
    one_row = num_rows == 1
    # One row: a colour per criterion. Several rows: a colour per covariance type, a style per criterion.
    for c, (name, arr) in enumerate(values.items()):
        for t in range(num_rows):
            color = f"C{c}" if one_row else f"C{t}"
            label = name if row_names[t] is None else f"{name}, {row_names[t]}"
            ax.plot(
                ks,
                arr[t],
                color=color,
                linestyle=styles[c % len(styles)] if not one_row else "-",
                marker=markers[c % len(markers)],
                markersize=4,
                linewidth=1.5,
                label=label,
                gid="gmmjax-criterion",
            )
        if np.all(np.isnan(arr)):
            continue
        t_min, j_min = np.unravel_index(np.nanargmin(arr), arr.shape)
        where = f"K={ks[j_min]:g}" + ("" if row_names[t_min] is None else f", {row_names[t_min]}")
        ax.plot(
            [ks[j_min]],
            [arr[t_min, j_min]],
            linestyle="",
            marker="*",
            markersize=17,
            color=f"C{c}" if one_row else f"C{t_min}",
            markeredgecolor="black",
            zorder=5,
            gid="gmmjax-minimum",
            label=f"{name} minimum: {where}",
        )
    _name_minima(ax, ks, values)
    ax.set_xlabel("number of components K")
    ax.set_ylabel("criterion (lower is better)")
    ax.set_title("Information criteria")
    if np.allclose(ks, np.round(ks)):
        ax.set_xticks(ks if ks.size <= 20 else ks[:: int(np.ceil(ks.size / 20))])
    ax.grid(alpha=0.3)
    minima = [line for line in ax.get_lines() if line.get_gid() == "gmmjax-minimum"]
    if one_row:
        ax.legend(fontsize="small")
    else:  # colours name the covariance types and line styles the criteria: T + C entries, not T x C
        handles = [mlines.Line2D([], [], color=f"C{t}", linewidth=2.5, label=row_names[t]) for t in range(num_rows)]
        handles += [
            mlines.Line2D(
                [],
                [],
                color="0.25",
                linestyle=styles[c % len(styles)],
                marker=markers[c % len(markers)],
                markersize=4,
                label=name,
            )
            for c, name in enumerate(values)
        ]
        ax.legend(
            handles=handles + minima, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0
        )
    return ax


def plot_selection(result_or_model, criteria: Sequence[str] = CRITERIA, ax=None, *, figsize=None):
    """The criteria of a model selection over the number of components: :func:`plot_criteria`
    fed from a :class:`~gmmjax.SelectionResult`.

    Args:
      result_or_model: a :class:`~gmmjax.SelectionResult` of one selection (from
        :func:`gmmjax.select_num_components`, not batched) or a model returned by
        :meth:`GaussianMixtureModel.select <gmmjax.GaussianMixtureModel.select>` (its ``selection_``).
      criteria: which of ``"bic"``, ``"aic"``, ``"icl"`` to draw, in this order.
      ax: matplotlib Axes to draw on; ``None`` makes a new figure.
      figsize: size of a new figure (ignored when ``ax`` is given).

    Returns:
      The matplotlib Axes, as :func:`plot_criteria` draws it (one line per criterion and
      covariance type, a star at each criterion's minimum), titled with the selected model.
      The star of the selection's own criterion (``result.criterion``) is the selected model:
      both take the first minimum in the order (type, ``K``).

    Example::

        selection = gj.select_num_components(jax.random.key(0), X, 8, covariance_types="all")
        plot_selection(selection)            # or plot_selection(GaussianMixtureModel.select(X, 8))
    """
    result = result_or_model
    if isinstance(result_or_model, GaussianMixtureModel):
        result = result_or_model.__dict__.get("selection_")
        if result is None:
            raise ValueError(
                "plot_selection needs a model returned by GaussianMixtureModel.select (it keeps the "
                "table as selection_); a model from fit() has no selection to draw."
            )
    if not isinstance(result, SelectionResult):
        raise ValueError(
            "plot_selection needs a SelectionResult (from gmmjax.select_num_components) or a model "
            f"returned by GaussianMixtureModel.select, got {type(result_or_model).__name__}."
        )
    if np.ndim(result.bic) != 2:
        raise ValueError(
            f"plot_selection draws one selection: its criteria must be (types, K), got shape "
            f"{np.shape(result.bic)} (a batch of selections: pick one first, e.g. with "
            "jax.tree_util.tree_map(lambda leaf: leaf[i], result))."
        )
    names = [criteria] if isinstance(criteria, str) else list(criteria)
    if not names or any(name not in CRITERIA for name in names) or len(set(names)) != len(names):
        raise ValueError(f"criteria must be distinct names among {CRITERIA}, got {criteria!r}.")
    ax = plot_criteria(
        np.asarray(result.num_components),
        {name.upper(): np.asarray(getattr(result, name)) for name in names},
        result.covariance_types,
        ax,
        figsize=figsize,
    )
    ax.set_title(
        f"Information criteria (best by {result.criterion.upper()}: "
        f"K={int(result.best_num_components)}, {result.best_covariance_type})"
    )
    return ax
