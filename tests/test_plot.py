"""gmmjax.plot: pictures rendered headlessly (Agg) and checked through their artists.

Ellipses are compared with the closed-form eigen-decomposition of 2×2 covariances, the
projection of higher-dimensional data with an independent PCA (NumPy SVD); the PNG files
are checked to be real, non-blank images of the requested size.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")  # headless; before pyplot is imported anywhere in this process

import jax  # noqa: E402
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.image as mimage  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import gmmjax as gj  # noqa: E402
from _oracles import full_covariances, make_blobs  # noqa: E402
from gmmjax.plot import plot_criteria, plot_lower_bounds, plot_mixture, plot_selection  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    # The shapes and fit configuration of test_core_parity's history test: compiled once per session.
    X, _, _ = make_blobs(n=300, d=2, k=3, seed=0, spread=4.0)
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def model(data):
    return gj.GaussianMixtureModel(
        num_components=4, num_iters=40, n_init=3, init_params="random_from_data", seed=3
    ).fit(data)


def artists(ax, gid):
    return [a for a in ax.get_children() if a.get_gid() == gid]


def ellipses(ax):
    return [p for p in ax.patches if p.get_gid() == "gmmjax-ellipse"]


def scatter_points(ax, gid="gmmjax-data"):
    (collection,) = artists(ax, gid)
    return np.asarray(collection.get_offsets())


def closed_form_ellipse(cov, n_std):
    """Width, height, angle (deg) of a 2×2 covariance's contour, from the closed-form eigenvalues."""
    a, b, c = cov[0, 0], cov[0, 1], cov[1, 1]
    half_trace, radius = (a + c) / 2, math.hypot((a - c) / 2, b)
    angle = 0.5 * math.degrees(math.atan2(2 * b, a - c))  # direction of the larger eigenvalue's eigenvector
    return 2 * n_std * math.sqrt(half_trace + radius), 2 * n_std * math.sqrt(half_trace - radius), angle


def assert_same_axis_angle(actual, expected, tol=1e-6):
    """Ellipse angles are axes, defined modulo 180 degrees."""
    difference = (actual - expected + 90.0) % 180.0 - 90.0
    assert abs(difference) < tol, (actual, expected)


def assert_png(path, width_px, height_px, min_colors=8):
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE
    assert raw[12:16] == b"IHDR"
    assert struct.unpack(">II", raw[16:24]) == (width_px, height_px)
    assert len(raw) > 5_000, f"{path} is suspiciously small ({len(raw)} bytes)"
    pixels = mimage.imread(path)
    assert pixels.shape[:2] == (height_px, width_px)
    colors = np.unique(np.round(pixels[..., :3].reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colors) >= min_colors, f"{path} is nearly blank ({len(colors)} colours)"


# --------------------------------------------------------------------------- plot_mixture


def test_ellipses_match_the_closed_form_for_a_known_covariance(tmp_path):
    covariance = np.array([[3.0, 1.0], [1.0, 2.0]])  # eigenvalues (5 ± √5)/2, major axis at 31.72°
    params = gj.GMMParams(
        np.array([0.7, 0.3]),
        np.array([[1.0, -2.0], [6.0, 4.0]]),
        np.stack([covariance, np.diag([0.5, 2.0])]),
        covariance_type="full",
    )
    ax = plot_mixture(params, n_std=(1, 2))
    drawn = ellipses(ax)
    assert len(drawn) == 2 * 2
    expected = [(k, level) for k in range(2) for level in (1, 2)]
    for patch, (k, level) in zip(drawn, expected):
        width, height, angle = closed_form_ellipse(np.asarray(params.covariances[k]), level)
        assert patch.width == pytest.approx(width, rel=1e-9)
        assert patch.height == pytest.approx(height, rel=1e-9)
        if not np.isclose(width, height):
            assert_same_axis_angle(patch.angle, angle)
        np.testing.assert_allclose(patch.center, params.means[k])
    assert drawn[0].width == pytest.approx(2 * math.sqrt((5 + math.sqrt(5)) / 2))
    assert_same_axis_angle(drawn[0].angle, 31.717474411461005)
    assert_same_axis_angle(drawn[2].angle, 90.0)  # diag(0.5, 2): the long axis is vertical
    # the means are drawn where they are, and nothing else is
    np.testing.assert_allclose(scatter_points(ax, "gmmjax-mean"), params.means)
    assert not artists(ax, "gmmjax-data")
    path = tmp_path / "ellipses.png"
    ax.figure.savefig(path, dpi=50)
    assert_png(path, *(round(50 * s) for s in ax.figure.get_size_inches()))


@pytest.mark.parametrize("covariance_type", gj.COVARIANCE_TYPES)
def test_every_covariance_type_draws_k_ellipses_per_level(covariance_type):
    rng = np.random.default_rng(1)
    k, d = 3, 2
    full = np.stack([a @ a.T + 0.2 * np.eye(d) for a in rng.normal(size=(k, d, d))])
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": np.stack([np.diag(c) for c in full]),
        "spherical": np.array([0.5, 1.0, 2.0]),
    }[covariance_type]
    params = gj.GMMParams(np.full(k, 1 / k), rng.normal(scale=5, size=(k, d)), covariances, covariance_type)
    levels = (1.0, 2.0, 3.0)
    ax = plot_mixture(params, n_std=levels)
    drawn = ellipses(ax)
    assert len(drawn) == k * len(levels)
    oracle = full_covariances(covariances, covariance_type, k, d)
    for i, patch in enumerate(drawn):
        width, height, angle = closed_form_ellipse(oracle[i // len(levels)], levels[i % len(levels)])
        assert (patch.width, patch.height) == pytest.approx((width, height), rel=1e-9)
        if covariance_type in ("full", "tied"):
            assert_same_axis_angle(patch.angle, angle)


def test_points_coloured_by_predicted_component(model, data, tmp_path):
    ax = plot_mixture(model, data)
    points = scatter_points(ax)
    assert points.shape == data.shape
    np.testing.assert_allclose(points, data, rtol=1e-6)  # 2-D data: drawn as is
    assert len(ellipses(ax)) == 4 * 2
    # each point has the colour of its predicted component's ellipses
    component_rgb = np.array([mcolors.to_rgb(p.get_edgecolor()) for p in ellipses(ax)[::2]])
    point_rgb = np.asarray(artists(ax, "gmmjax-data")[0].get_facecolors())[:, :3]
    np.testing.assert_allclose(point_rgb, component_rgb[model.predict(data)])
    # given labels win over predictions
    labels = np.arange(len(data)) % 2
    ax = plot_mixture(model, data, labels=labels, legend=False)
    point_rgb = np.asarray(artists(ax, "gmmjax-data")[0].get_facecolors())[:, :3]
    np.testing.assert_allclose(point_rgb, component_rgb[labels])
    assert ax.get_legend() is None
    path = tmp_path / "mixture.png"
    ax.figure.savefig(path, dpi=60)
    assert_png(path, *(round(60 * s) for s in ax.figure.get_size_inches()), min_colors=50)


def test_more_than_two_features_are_projected_on_the_principal_axes():
    rng = np.random.default_rng(2)
    k, d = 2, 4
    full = np.stack([a @ a.T + 0.3 * np.eye(d) for a in rng.normal(size=(k, d, d))])
    params = gj.GMMParams(np.array([0.4, 0.6]), rng.normal(scale=3, size=(k, d)), full, "full")
    labels = np.arange(200) % 2
    X = np.stack([rng.multivariate_normal(params.means[j], full[j]) for j in labels])
    ax = plot_mixture(params, X, labels=labels)
    # oracle: PCA by SVD of the centred data; principal axes are defined up to sign
    center = X.mean(axis=0)
    axes = np.linalg.svd(X - center, full_matrices=False)[2][:2].T
    points = scatter_points(ax)
    signs = np.sign(np.sum(points * ((X - center) @ axes), axis=0))
    axes = axes * signs
    np.testing.assert_allclose(points, (X - center) @ axes, atol=1e-4)
    np.testing.assert_allclose(scatter_points(ax, "gmmjax-mean"), (params.means - center) @ axes, atol=1e-4)
    drawn = ellipses(ax)
    for i, patch in enumerate(drawn):
        level = (1.0, 2.0)[i % 2]
        width, height, angle = closed_form_ellipse(axes.T @ full[i // 2] @ axes, level)
        assert (patch.width, patch.height) == pytest.approx((width, height), rel=1e-5)
        assert_same_axis_angle(patch.angle, angle, tol=1e-3)
    assert "principal axis 1" in ax.get_xlabel() and "principal axis 2" in ax.get_ylabel()


def test_at_most_max_points_are_drawn(data):
    params = gj.GMMParams(np.array([1.0]), np.zeros((1, 2)), np.ones(1), "spherical")
    ax = plot_mixture(params, data, labels=np.zeros(len(data), int), max_points=100)
    points = scatter_points(ax)
    assert points.shape == (100, 2)
    assert len(np.unique(points, axis=0)) == 100
    assert all((data == p).all(axis=1).any() for p in points)  # a subset of the data


def test_plot_mixture_rejects_bad_input(data):
    params = gj.GMMParams(np.array([1.0]), np.zeros((1, 2)), np.ones(1), "spherical")
    with pytest.raises(ValueError, match="not fitted"):
        plot_mixture(gj.GaussianMixtureModel(2), data)
    with pytest.raises(ValueError, match="GMMParams"):
        plot_mixture(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="features"):
        plot_mixture(params, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="labels must be 300 integers"):
        plot_mixture(params, data, labels=np.zeros(3, int))
    with pytest.raises(ValueError, match="pass X too"):
        plot_mixture(params, labels=np.zeros(3, int))
    with pytest.raises(ValueError, match="n_std must be positive"):
        plot_mixture(params, n_std=(1, -2))
    with pytest.raises(ValueError, match="at least 2 features"):
        plot_mixture(gj.GMMParams(np.array([1.0]), np.zeros((1, 1)), np.ones(1), "spherical"))
    batched = jax.tree_util.tree_map(lambda leaf: np.stack([leaf, leaf]), params)
    with pytest.raises(ValueError, match="one mixture"):
        plot_mixture(batched)


# --------------------------------------------------------------------------- plot_lower_bounds


def test_lower_bounds_one_line_per_restart_without_nan_tails(model, tmp_path):
    result = model.fit_result_
    history = np.asarray(result.lower_bound_history)
    n_iter = np.asarray(result.restart_n_iter)
    assert np.isnan(history).any(), "the fixture should have restarts that stopped before max_iter"
    ax = plot_lower_bounds(model)
    lines = artists(ax, "gmmjax-restart")
    assert len(lines) == 3
    for line in lines:
        r = int(line.get_label().split()[-1])
        x, y = line.get_data()
        np.testing.assert_array_equal(x, np.arange(1, n_iter[r] + 1))
        np.testing.assert_array_equal(y, history[r, : n_iter[r]])
        assert np.all(np.isfinite(y))
    best = int(result.best_restart)
    (best_line,) = [line for line in lines if line.get_label() == f"_restart {best}"]
    assert best_line.get_linewidth() > max(line.get_linewidth() for line in lines if line is not best_line)
    assert best_line is lines[-1]  # drawn on top
    assert f"best restart ({best})" in [t.get_text() for t in ax.get_legend().get_texts()]
    ends = artists(ax, "gmmjax-restart-end")
    assert [e.get_marker() for e in ends] == [
        "o" if np.asarray(result.restart_converged)[int(line.get_label().split()[-1])] else "x" for line in lines
    ]
    path = tmp_path / "lower_bounds.png"
    ax.figure.savefig(path, dpi=50)
    assert_png(path, *(round(50 * s) for s in ax.figure.get_size_inches()))


def test_lower_bounds_of_a_fit_result_and_a_loaded_model(model, tmp_path):
    result = model.fit_result_
    ax = plot_lower_bounds(result)
    assert len(artists(ax, "gmmjax-restart")) == 3
    model.save(tmp_path / "model.npz")
    loaded = gj.GaussianMixtureModel.load(tmp_path / "model.npz")
    ax = plot_lower_bounds(loaded)  # a loaded model keeps the best restart's history only
    (line,) = artists(ax, "gmmjax-restart")
    np.testing.assert_array_equal(line.get_ydata(), model.lower_bounds_)
    with pytest.raises(ValueError, match="not fitted"):
        plot_lower_bounds(gj.GaussianMixtureModel(2))
    with pytest.raises(ValueError, match="FitResult"):
        plot_lower_bounds(np.zeros((3, 4)))


def test_lower_bounds_stop_at_the_first_nan():
    history = np.array([[-3.0, -2.0, -1.5, np.nan, np.nan], [-4.0, -2.5, np.nan, np.nan, np.nan]])
    restarts = gj.FitState(
        params=None,
        lower_bound=np.array([-1.5, -2.5]),
        n_iter=np.array([3, 2]),
        converged=np.array([True, False]),
        lower_bound_history=history,
        collapsed_components=None,
    )
    result = gj.FitResult(
        params=None, lower_bound=np.float32(-1.5), n_iter=3, converged=True, best_restart=0, restarts=restarts
    )
    ax = plot_lower_bounds(result)
    ys = {line.get_label(): line.get_ydata() for line in artists(ax, "gmmjax-restart")}
    np.testing.assert_array_equal(ys["_restart 0"], [-3.0, -2.0, -1.5])
    np.testing.assert_array_equal(ys["_restart 1"], [-4.0, -2.5])
    assert [e.get_marker() for e in artists(ax, "gmmjax-restart-end")] == ["x", "o"]


# --------------------------------------------------------------------------- plot_criteria


def test_criteria_curves_and_minimum_markers(tmp_path):
    ks = np.arange(1, 7)
    rng = np.random.default_rng(3)
    bic = rng.normal(size=(4, 6)) * 10 + 100
    bic[1, 2] = np.nan  # a fit that was not possible: left out, not the minimum
    aic = bic - 5
    aic[3, 4] = 0.0
    ax = plot_criteria(ks, {"BIC": bic, "AIC": aic}, gj.COVARIANCE_TYPES)
    curves = artists(ax, "gmmjax-criterion")
    assert len(curves) == 2 * 4
    for line, values in zip(curves, [*bic, *aic]):
        np.testing.assert_array_equal(line.get_xdata(), ks)
        np.testing.assert_array_equal(line.get_ydata(), values)
    stars = artists(ax, "gmmjax-minimum")
    assert len(stars) == 2
    for star, values, name in zip(stars, (bic, aic), ("BIC", "AIC")):
        t, j = np.unravel_index(np.nanargmin(values), values.shape)
        np.testing.assert_array_equal(star.get_xydata(), [[ks[j], values[t, j]]])
        assert star.get_label() == f"{name} minimum: K={ks[j]}, {gj.COVARIANCE_TYPES[t]}"
    assert stars[1].get_label() == "AIC minimum: K=5, spherical"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:6] == [*gj.COVARIANCE_TYPES, "BIC", "AIC"]
    path = tmp_path / "criteria.png"
    ax.figure.savefig(path, dpi=50)
    assert_png(path, *(round(50 * s) for s in ax.figure.get_size_inches()))


def test_criteria_one_row_and_bad_input():
    ax = plot_criteria([2, 3, 4], {"BIC": [5.0, 3.0, 4.0], "ICL": np.array([1.0, 2.0, np.inf])})
    stars = artists(ax, "gmmjax-minimum")
    assert [tuple(s.get_xydata()[0]) for s in stars] == [(3.0, 3.0), (2.0, 1.0)]
    assert [s.get_label() for s in stars] == ["BIC minimum: K=3", "ICL minimum: K=2"]
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(num_types, 3\)"):
        plot_criteria([1, 2, 3], {"BIC": np.zeros(4)})
    with pytest.raises(ValueError, match="pass covariance_types"):
        plot_criteria([1, 2, 3], {"BIC": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="3 names for 2 rows"):
        plot_criteria([1, 2, 3], {"BIC": np.zeros((2, 3))}, ["full", "diag", "tied"])
    with pytest.raises(ValueError, match="same number of rows"):
        plot_criteria([1, 2, 3], {"BIC": np.zeros((2, 3)), "AIC": np.zeros(3)}, ["full", "diag"])
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_criteria([1, 2, 3], {})


def test_minima_are_named_next_to_their_stars():
    # ICL's minimum on BIC's (no overlap between clusters): one label for both; AIC's apart.
    bic = np.array([[10.0, 4.0, 6.0], [12.0, 7.0, 8.0]])
    ax = plot_criteria([1, 2, 3], {"BIC": bic, "AIC": bic - 3.0, "ICL": bic + 1e-3}, ["full", "diag"])
    labels = {text.get_text(): text.xy for text in artists(ax, "gmmjax-minimum-label")}
    assert labels == {"BIC, ICL": (2, 4.0), "AIC": (2, 1.0)}
    assert all(text.xyann[1] < 0 for text in artists(ax, "gmmjax-minimum-label"))  # under the stars
    # AIC's star just under BIC's: BIC's label goes over its star, AIC's under.
    ax = plot_criteria([1, 2, 3], {"BIC": bic, "AIC": bic - 0.6}, ["full", "diag"])
    offsets = {text.get_text(): text.xyann[1] for text in artists(ax, "gmmjax-minimum-label")}
    assert offsets["BIC"] > 0 > offsets["AIC"]


def _selection_table(criterion, covariance_types=("full", "diag")):
    """A hand-made SelectionResult (no fit): two types, K = 1..4, the best chosen as
    select_num_components chooses it (the first minimum in the order type, K)."""
    rng = np.random.default_rng(5)
    shape = (len(covariance_types), 4)
    bic = 1000.0 + rng.normal(scale=30.0, size=shape)
    aic, icl = bic - rng.uniform(5, 50, size=shape), bic + rng.uniform(0, 20, size=shape)
    table = {"bic": bic, "aic": aic, "icl": icl}
    best = np.unravel_index(np.argmin(table[criterion]), shape)
    return gj.SelectionResult(
        num_components=np.arange(1, 5),
        **table,
        mean_log_likelihood=np.zeros(shape),
        n_iter=np.ones(shape, int),
        converged=np.ones(shape, bool),
        fits=(),
        best_type_index=np.int32(best[0]),
        best_index=np.int32(best[1]),
        covariance_types=covariance_types,
        criterion=criterion,
    )


@pytest.mark.parametrize("criterion", ["aic", "icl"])
def test_plot_selection_draws_every_criterion_per_type(criterion):
    result = _selection_table(criterion)
    ax = plot_selection(result)
    curves = artists(ax, "gmmjax-criterion")
    expected = [
        (f"{name.upper()}, {t}", getattr(result, name)[i])
        for name in ("bic", "aic", "icl")
        for i, t in enumerate(result.covariance_types)
    ]
    assert [line.get_label() for line in curves] == [label for label, _ in expected]
    for line, (_, values) in zip(curves, expected):
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(line.get_ydata(), values)
    stars = {star.get_label().split()[0]: star for star in artists(ax, "gmmjax-minimum")}
    assert sorted(stars) == ["AIC", "BIC", "ICL"]
    # The selection criterion's star is the selected model.
    t, j = int(result.best_type_index), int(result.best_index)
    winner = stars[criterion.upper()]
    np.testing.assert_array_equal(winner.get_xydata(), [[j + 1, getattr(result, criterion)[t, j]]])
    assert winner.get_label() == f"{criterion.upper()} minimum: K={j + 1}, {result.covariance_types[t]}"
    assert (
        ax.get_title() == f"Information criteria (best by {criterion.upper()}: K={j + 1}, {result.covariance_types[t]})"
    )


def test_plot_selection_of_some_criteria_and_one_type():
    result = _selection_table("bic", covariance_types=("tied",))
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_selection(result, criteria=["icl", "bic"], ax=left) is left
    assert [line.get_label() for line in artists(left, "gmmjax-criterion")] == ["ICL, tied", "BIC, tied"]
    assert plot_selection(result, criteria="aic", ax=right) is right
    (curve,) = artists(right, "gmmjax-criterion")
    np.testing.assert_array_equal(curve.get_ydata(), result.aic[0])
    assert len(plt.get_fignums()) == 1


def test_plot_selection_of_a_selected_model(tmp_path):
    # test_model_selection's data and configuration: its compiled program is reused.
    X = make_blobs(n=150, d=2, k=3, seed=4, spread=6.0)[0].astype(np.float32)
    model = gj.GaussianMixtureModel.select(X, 3, covariance_types=("full", "diag"))
    selection = model.selection_
    ax = plot_selection(model)
    for line, values in zip(artists(ax, "gmmjax-criterion"), [*selection.bic, *selection.aic, *selection.icl]):
        np.testing.assert_array_equal(line.get_ydata(), np.asarray(values, np.float64))
    (bic_star,) = [star for star in artists(ax, "gmmjax-minimum") if star.get_label().startswith("BIC")]
    np.testing.assert_array_equal(bic_star.get_xydata(), [[model.num_components, np.min(selection.bic)]])
    assert bic_star.get_label() == f"BIC minimum: K={model.num_components}, {model.covariance_type}"
    path = tmp_path / "selection.png"
    ax.figure.savefig(path, dpi=50)
    assert_png(path, *(round(50 * s) for s in ax.figure.get_size_inches()))


def test_plot_selection_rejects_bad_input(model):
    result = _selection_table("bic")
    with pytest.raises(ValueError, match="model returned by GaussianMixtureModel.select"):
        plot_selection(model)  # fitted by fit(): no selection_
    with pytest.raises(ValueError, match="needs a SelectionResult"):
        plot_selection({"bic": result.bic})
    with pytest.raises(ValueError, match=r"criteria must be distinct names among \('bic', 'aic', 'icl'\)"):
        plot_selection(result, criteria=("bic", "mdl"))
    with pytest.raises(ValueError, match="criteria must be distinct"):
        plot_selection(result, criteria=("bic", "bic"))
    with pytest.raises(ValueError, match="criteria must be distinct"):
        plot_selection(result, criteria=())
    batched = jax.tree_util.tree_map(lambda leaf: np.stack([leaf, leaf]), result)
    with pytest.raises(ValueError, match="one selection"):
        plot_selection(batched)


def test_existing_axes_are_used():
    fig, (left, right) = plt.subplots(1, 2)
    params = gj.GMMParams(np.array([1.0]), np.zeros((1, 2)), np.ones(1), "spherical")
    assert plot_mixture(params, ax=left) is left
    assert plot_criteria([1, 2], {"BIC": [1.0, 2.0]}, ax=right) is right
    assert len(plt.get_fignums()) == 1


# --------------------------------------------------------------------------- optional dependency


def test_gmmjax_imports_without_matplotlib_and_plot_says_how_to_install():
    code = textwrap.dedent("""
        import sys

        class BlockMatplotlib:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "matplotlib":
                    raise ImportError("No module named 'matplotlib' (blocked)")
                return None

        blocker = BlockMatplotlib()
        sys.meta_path.insert(0, blocker)
        import gmmjax
        assert not any(name.split(".")[0] == "matplotlib" for name in sys.modules)
        try:
            import gmmjax.plot
        except ImportError as exc:
            print("IMPORT ERROR:", exc)
        try:
            gmmjax.plot  # the lazy attribute says the same
        except ImportError as exc:
            print("ATTRIBUTE ERROR:", exc)
        # Once matplotlib can be imported, the attribute loads gmmjax.plot on first access.
        sys.meta_path.remove(blocker)
        assert "gmmjax.plot" not in sys.modules and "matplotlib" not in sys.modules
        print("LAZY:", gmmjax.plot.plot_mixture.__module__, "matplotlib" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'IMPORT ERROR: gmmjax.plot needs matplotlib, an optional extra: pip install "gmmjax[plots]"' in proc.stdout
    assert (
        'ATTRIBUTE ERROR: gmmjax.plot needs matplotlib, an optional extra: pip install "gmmjax[plots]"' in proc.stdout
    )
    assert "LAZY: gmmjax.plot True" in proc.stdout


def test_plot_is_a_lazy_attribute_of_gmmjax(monkeypatch):
    import gmmjax.plot as plot_module

    monkeypatch.delattr(gj, "plot")  # as after a bare "import gmmjax"
    assert "plot" not in vars(gj)
    assert gj.plot is plot_module  # resolved by gmmjax.__getattr__
    with pytest.raises(AttributeError, match="module 'gmmjax' has no attribute 'plott'"):
        gj.plott  # noqa: B018
