"""Command line: every command as a new user would run it, checked against the library.

In-process through ``main(argv)`` for speed; one ``python -m gmmjax fit`` and one run of the
``gmmjax`` console script in subprocesses prove the entry points. All commands use the demo's
data (600 × 2) and K=2 with the default options, so the fit compiles once (the same program
as the demo's). ``select`` runs on tests/test_model_selection.py's data and configuration
(150 × 2, K = 1..3, full and diag), so the two files share one compiled selection program.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import jax
import numpy as np
import pytest
from _children import child_env

import _oracles as O
import gmmjax as gj
from gmmjax import GaussianMixtureModel, _cli

TRUE_WEIGHTS = [0.6, 0.4]
TRUE_MEANS = [[0.0, 0.0], [3.0, 3.0]]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**changes):
    """The subprocess imports this checkout's gmmjax, whatever is installed, and does not write
    to the user's compilation cache (``changes``: more variables; ``None`` removes one)."""
    return child_env(**changes)


@pytest.fixture(scope="module", autouse=True)
def _no_compilation_cache():
    """In-process commands would turn JAX's persistent cache on for the whole test session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GMMJAX_NO_CACHE", "1")
        yield


def _run(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "gmmjax", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def check_demo_output(text):
    """Parses the demo's report and checks it against the generating parameters."""
    weights = re.findall(r"weight\s+true\s+([-\d.]+)\s+estimated\s+([-\d.]+)", text)
    assert len(weights) == 2, text
    true_w = [float(t) for t, _ in weights]
    est_w = [float(e) for _, e in weights]
    assert true_w == TRUE_WEIGHTS
    # 600 samples: a weight's standard error is about 0.02
    np.testing.assert_allclose(est_w, TRUE_WEIGHTS, atol=0.08)
    assert sum(est_w) == pytest.approx(1.0, abs=2e-3)
    means = re.findall(r"mean\s+true\s+\[([^\]]*)\]\s+estimated\s+\[([^\]]*)\]", text)
    assert len(means) == 2, text
    est_means = np.array([[float(v) for v in e.split()] for _, e in means])
    np.testing.assert_allclose(est_means, TRUE_MEANS, atol=0.25)
    assert "covariance" in text
    ll = re.search(r"mean log-likelihood\s+(-?[\d.]+)\s+iterations\s+(\d+)\s+converged\s+(True|False)", text)
    assert ll, text
    # The true mixture's mean log-density is about -3.3 (2-D, |Σ| = 0.75, well separated).
    assert -3.7 < float(ll.group(1)) < -3.0
    assert 1 <= int(ll.group(2)) <= 100
    assert ll.group(3) == "True"
    t = re.search(r"time .*?([\d.]+) s", text)
    assert t and float(t.group(1)) >= 0


def test_demo_subprocess():
    proc = _run("demo")
    assert proc.returncode == 0, proc.stderr
    check_demo_output(proc.stdout)


def test_help_subprocess():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: gmmjax" in proc.stdout and "demo" in proc.stdout
    proc = _run("demo", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: gmmjax demo" in proc.stdout and "--num-samples" in proc.stdout and "--seed" in proc.stdout


def test_demo_in_process(capsys):
    assert _cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    check_demo_output(out)


def test_demo_does_not_change_numpy_print_options(capsys):
    before = np.get_printoptions()
    _cli.main(["demo", "--seed", "1"])
    capsys.readouterr()
    assert np.get_printoptions() == before


def test_help_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        _cli.main(["--help"])
    assert exc.value.code == 0
    assert "usage: gmmjax" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert _cli.main([]) == 2
    assert "usage: gmmjax" in capsys.readouterr().out


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        _cli.main(["demo", "--num-samples", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--num-samples: must be at least 2" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        _cli.main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


# -- fit, predict, score, sample --------------------------------------------------------------------
def cli(*argv):
    """``main(argv)`` in-process: returns ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = _cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: --help and usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


class Work:
    """Files of the command-line tests (one directory per module) and the model ``fit`` made."""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = Work()
    w.dir = d = tmp_path_factory.mktemp("cli")
    w.X = X = np.asarray(
        gj.generate_gmm_data(600, _cli.DEMO_WEIGHTS, _cli.DEMO_MEANS, _cli.DEMO_COVARIANCES, key=jax.random.key(0))
    )
    w.data_csv, w.data_npy, w.model_path = d / "data.csv", d / "data.npy", d / "model.npz"
    np.savetxt(w.data_csv, X, delimiter=",", header="x,y", comments="")  # float32 values, exactly
    np.save(w.data_npy, X)
    np.savez(d / "single.npz", X)
    np.savez(d / "multi.npz", a=X[:10], b=X)
    np.savez(d / "objects.npz", np.array([1.0, "a"], dtype=object))
    np.savetxt(d / "spaces.txt", X, header="generated by the tests")  # "# ..." comment, whitespace
    np.savetxt(d / "semicolon.csv", X, delimiter=";", header="x;y", comments="")
    (d / "bad.csv").write_text("x,y\n1,2\n3,abc\n")
    (d / "ragged.csv").write_text("1,2\n3,4,5\n")
    (d / "three.csv").write_text("1,2\n3,4\n5,6\n")
    with_nan = X.copy()
    with_nan[7, 1] = np.nan
    np.savetxt(d / "nan.csv", with_nan, delimiter=",")
    np.save(d / "nan.npy", with_nan)
    np.save(d / "wide.npy", np.hstack([X, X[:, :1]]))
    (d / "junk.npy").write_text("not numpy\n")
    (d / "notes.xlsx").write_text("")
    w.fit = cli("fit", w.data_csv, "-k", 2, "-o", w.model_path)
    w.model = GaussianMixtureModel.load(w.model_path)
    (d / "one-feature.csv").write_text("x\n1\n2\n3\n4\n")
    with np.load(w.model_path, allow_pickle=False) as archive:  # hand-edited models
        content = {name: archive[name] for name in archive.files}
    planted = np.empty(2, dtype=object)
    planted[:] = [0.5, 0.5]
    for name, changes in {
        "not-pd": dict(covariances=np.ones((2, 2, 2), np.float32)),
        "nan-weights": dict(weights=np.array([np.nan, 0.5], np.float32)),
        "three-weights": dict(weights=np.full(3, 1 / 3, np.float32)),
        "version0": dict(format_version=np.int64(0)),
        "unknown-key": dict(hyperparameters=np.str_('{"frobnicate": 1}')),
        "string-means": dict(means=np.array([["0", "0"], ["3", "3"]])),
        "object": dict(weights=planted),
    }.items():
        np.savez(d / f"{name}.npz", **{**content, **changes})
    return w


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return float(match.group(1))


def test_fit_prints_and_saves_the_model_the_library_fits(work):
    code, out, err = work.fit
    assert code == 0 and err == "", err
    model = work.model
    # The command is the estimator with the same options (and the same program as the demo).
    reference = GaussianMixtureModel(num_components=2, seed=0).fit(work.X)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(model, name), getattr(reference, name), err_msg=name)
    # ... and recovers the generating mixture (600 samples).
    order = np.argsort(model.means_[:, 0])
    np.testing.assert_allclose(model.weights_[order], _cli.DEMO_WEIGHTS, atol=0.08)
    np.testing.assert_allclose(model.means_[order], _cli.DEMO_MEANS, atol=0.25)
    # The printed table is the model.
    rows = re.findall(r"^\s+(\d+)\s+([-\d.]+)\s+\[([^\]]*)\]$", out, flags=re.M)
    assert [int(k) for k, _, _ in rows] == [0, 1], out
    np.testing.assert_allclose([float(w) for _, w, _ in rows], model.weights_, atol=1e-4)
    np.testing.assert_allclose([[float(v) for v in m.split()] for _, _, m in rows], model.means_, atol=1e-4)
    assert _number(r"mean log-likelihood\s+(\S+)", out) == pytest.approx(model.score(work.X), abs=1e-6)
    assert _number(r"BIC\s+(\S+)", out) == pytest.approx(model.bic(work.X), abs=1e-4)
    assert _number(r"AIC\s+(\S+)", out) == pytest.approx(model.aic(work.X), abs=1e-4)
    assert f"iterations {model.n_iter_}   converged {model.converged_}" in out
    assert "600 samples × 2 features, K=2, covariance full" in out
    assert "features  x, y" in out  # the header's names
    assert f"model saved to {work.model_path}" in out


@pytest.mark.parametrize(
    "name, key",
    [
        ("data.npy", None),
        ("single.npz", None),
        ("multi.npz", "b"),
        ("spaces.txt", None),
        ("semicolon.csv", None),
        ("data.csv", None),
    ],
)
def test_every_data_format_reads_the_same_array(work, name, key):
    np.testing.assert_array_equal(_cli.load_data(work.dir / name, key), work.X)


def test_fit_npz_with_key_and_wide_means(work):
    code, out, err = cli("fit", work.dir / "multi.npz", "--key", "b", "-k", 2, "-o", work.dir / "from-npz")
    assert code == 0, err
    assert f"model saved to {work.dir / 'from-npz.npz'}" in out
    np.testing.assert_array_equal(GaussianMixtureModel.load(work.dir / "from-npz.npz").means_, work.model.means_)
    # Wide data: a mean shows its first and last features, on one line.
    assert _cli._format_vector(np.arange(40.0)) == "[ 0.  1.  2. ... 37. 38. 39.]"


def test_predict_writes_labels_and_probabilities(work):
    model, X = work.model, work.X
    code, out, err = cli("predict", work.model_path, work.data_csv)
    assert code == 0 and err == "", err
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), model.predict(X))
    assert cli("predict", work.model_path, work.data_npy, "-o", work.dir / "labels.csv")[0] == 0
    np.testing.assert_array_equal(np.loadtxt(work.dir / "labels.csv", dtype=int), model.predict(X))
    assert cli("predict", work.model_path, work.data_npy, "--proba", "-o", work.dir / "proba.npy")[0] == 0
    np.testing.assert_array_equal(np.load(work.dir / "proba.npy"), model.predict_proba(X))
    code, out, _ = cli("predict", work.model_path, work.data_npy, "--proba")
    assert code == 0
    proba = np.loadtxt(io.StringIO(out), delimiter=",", dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(proba, model.predict_proba(X))  # %.9g round-trips float32


def test_score_prints_the_mean_log_likelihood(work):
    code, out, err = cli("score", work.model_path, work.data_csv, "--per-sample", work.dir / "logp.npy")
    assert code == 0 and err == "", err
    assert _number(r"mean log-likelihood (\S+)", out) == pytest.approx(work.model.score(work.X), rel=1e-8)
    assert "(600 samples)" in out
    np.testing.assert_array_equal(np.load(work.dir / "logp.npy"), work.model.score_samples(work.X))


def test_sample_draws_from_the_model(work):
    model = work.model
    code, out, err = cli(
        "sample", work.model_path, "-n", 1000, "--seed", 3, "-o", work.dir / "s.npy", "--labels", work.dir / "l.csv"
    )
    assert code == 0 and out == "" and err == "", err
    S, labels = np.load(work.dir / "s.npy"), np.loadtxt(work.dir / "l.csv", dtype=int)
    assert S.shape == (1000, 2) and labels.shape == (1000,)
    expected_S, expected_labels = model.sample(1000, key=jax.random.key(3))
    np.testing.assert_array_equal(S, expected_S)
    np.testing.assert_array_equal(labels, expected_labels)
    # From the model: component frequencies ≈ weights, each component's points ≈ its mean.
    np.testing.assert_allclose(np.bincount(labels, minlength=2) / 1000, model.weights_, atol=0.05)
    for k in range(2):
        np.testing.assert_allclose(S[labels == k].mean(axis=0), model.means_[k], atol=0.2)
    assert cli("sample", work.model_path, "-n", 1000, "--seed", 3, "-o", work.dir / "s.csv")[0] == 0
    np.testing.assert_array_equal(np.loadtxt(work.dir / "s.csv", delimiter=",").astype(np.float32), S)


def _commands():
    import argparse

    parser = _cli.build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(subparsers.choices)


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command):
    code, out, err = cli(command, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: gmmjax {command}") and "options:" in out


BAD_INPUTS = [  # (arguments, exit code, what stderr says); {d}: the test directory, {m}: the model
    ("fit {d}/missing.csv -k 2", 1, "missing.csv: no such file"),
    ("fit {d}/bad.csv -k 2", 1, "bad.csv, line 3, column 'y' (index 1): cannot read 'abc' as a number"),
    ("fit {d}/ragged.csv -k 2", 1, "ragged.csv, line 2: 3 values, but line 1 has 2"),
    (
        "fit {d}/nan.csv -k 2",
        1,
        "nan.csv, line 8, column index 1: missing value ('nan'): fill it in, or leave out such rows with --dropna",
    ),
    (
        "fit {d}/nan.npy -k 2",
        1,
        "nan.npy contains 1 NaN or infinite value(s) (the first in data row 8, column index "
        "1): remove or impute them (--dropna",
    ),
    ("fit {d}/junk.npy -k 2", 1, "junk.npy: not a NumPy .npy file"),
    ("fit {d}/notes.xlsx -k 2", 1, "unknown data format '.xlsx'"),
    ("fit {d}/multi.npz -k 2", 1, "holds 2 arrays ['a', 'b']: choose one with --key NAME"),
    ("fit {d}/multi.npz --key c -k 2", 1, "has no array 'c'"),
    (
        "fit {d}/objects.npz -k 2",
        1,
        "objects.npz: not a NumPy .npz file of numbers (an array of Python objects needs "
        "pickle, and gmmjax never unpickles a file)",
    ),
    ("fit {d}/data.csv --key b -k 2", 1, "--key selects an array inside an .npz file"),
    ("fit {m} -k 2", 1, "is a gmmjax model file, not data"),
    ("fit {d}/three.csv -k 4", 1, "three.csv has 3 samples, fewer than -k 4"),
    ("fit {d}/data.csv -k 2 -o {d}/model.pkl", 1, "unknown output format '.pkl': use .npz"),
    ("fit {d}/data.csv -k 2 -o {d}/no/such/dir/model.npz", 1, "the folder {d}/no/such/dir does not exist"),
    ("fit {d}/data.csv -k 2 --plot {d}/fit.gif", 1, "unknown output format '.gif': use .png or .pdf"),
    ("fit {d}/data.csv -k 0", 2, "argument -k/--num-components: must be at least 1, got 0"),
    ("fit {d}/data.csv -k two", 2, "expected an integer, got 'two'"),
    ("fit {d}/data.csv", 2, "the following arguments are required: -k/--num-components"),
    ("fit {d}/data.csv -k 2 --covariance-type banana", 2, "invalid choice: 'banana'"),
    ("fit {d}/data.csv -k 2 --tol -1", 2, "--tol: must be a non-negative finite number"),
    ("fit {d}/data.csv -k 2 --init-params magic", 2, "invalid choice: 'magic'"),
    ("fit {d}/data.csv -k 2 --frobnicate", 2, "unrecognized arguments: --frobnicate"),
    ("select {d}/three.csv -k 1:4", 1, "three.csv has 3 samples, fewer than the largest K 4"),
    ("select {d}/missing.csv -k 3", 1, "missing.csv: no such file"),
    ("select {d}/nan.csv -k 3", 1, "nan.csv, line 8, column index 1: missing value"),
    ("select {d}/multi.npz -k 3", 1, "choose one with --key NAME"),
    ("select {d}/data.csv -k 3 -o {d}/best.pkl", 1, "unknown output format '.pkl': use .npz"),
    ("select {d}/data.csv -k 3 --plot {d}/bic.gif", 1, "unknown output format '.gif': use .png"),
    ("select {d}/data.csv -k 3 --plot {d}/no/such/dir/bic.png", 1, "the folder {d}/no/such/dir does not exist"),
    ("select {d}/data.csv", 2, "the following arguments are required: -k/--num-components"),
    ("select {d}/data.csv -k 0:3", 2, "numbers of components must be at least 1, got 0 in '0:3'"),
    ("select {d}/data.csv -k 0", 2, "numbers of components must be at least 1, got 0"),
    ("select {d}/data.csv -k 5:2", 2, "empty range '5:2': A:B needs A <= B"),
    ("select {d}/data.csv -k 1:2:3", 2, "expected one range A:B (e.g. 1:10), got '1:2:3'"),
    ("select {d}/data.csv -k a:b", 2, "expected A:B (e.g. 1:10), K (for 1..K) or a comma list"),
    ("select {d}/data.csv -k 2,,4", 2, "expected A:B (e.g. 1:10), K (for 1..K) or a comma list"),
    ("select {d}/data.csv -k 2,4,2", 2, "'2,4,2' lists a number of components more than once"),
    ("select {d}/data.csv -k 3 --covariance-type banana", 2, "unknown covariance type 'banana': choose from full"),
    ("select {d}/data.csv -k 3 --covariance-type full,banana", 2, "unknown covariance type 'banana'"),
    ("select {d}/data.csv -k 3 --covariance-type full,full", 2, "lists a covariance type more than once"),
    ("select {d}/data.csv -k 3 --criterion mdl", 2, "invalid choice: 'mdl'"),
    ("select {d}/data.csv -k 3 --n-init 0", 2, "--n-init: must be at least 1"),
    ("select {d}/data.csv -k 3 --reg-covar nan", 2, "--reg-covar: must be a non-negative finite number"),
    ("select {d}/data.csv -k 3 --init-params magic", 2, "invalid choice: 'magic'"),
    ("predict {m} {d}/wide.npy", 1, "wide.npy has 3 features, but the model"),
    ("predict {d}/data.npy {d}/data.csv", 1, "is not a gmmjax model file"),
    ("predict {d}/data.csv {d}/data.csv", 1, "is not a gmmjax model file: not a NumPy .npz archive"),
    ("fit {d}/data.csv -k 2 -o {d}", 1, "is a folder: give a file name inside it"),
    ("fit {d}/data.csv -k 2 --seed -1", 2, "--seed: must be at least 0, got -1"),
    ("fit {d}/data.csv -k 2 --seed 9223372036854775808", 2, "--seed: must be at most 9223372036854775807"),
    ("predict {d}/missing.npz {d}/data.csv", 1, "missing.npz: no such file"),
    ("predict {m} {d}/data.csv -o {d}/no/such/dir/labels.csv", 1, "the folder {d}/no/such/dir does not exist"),
    ("predict {m} {d}/data.csv -o {d}/labels.parquet", 1, "unknown output format '.parquet'"),
    ("score {m} {d}/data.csv --per-sample {d}/logp.json", 1, "unknown output format '.json'"),
    ("score {m} {d}/nan.csv", 1, "nan.csv, line 8, column index 1: missing value"),
    ("sample {m} -n 0", 2, "--num-samples: must be at least 1"),
    ("sample {m} -o {d}/samples.bin", 1, "unknown output format '.bin': use .npy or .csv or .txt or .tsv"),
    ("sample {m} --labels {d}/labels", 1, "unknown output format '(no extension)'"),
    ("sample {m} -n 1000000000000", 1, "Drawing 1000000000000 samples of 2 features needs about"),
    ("fit {d}/one-feature.csv -k 1 --plot {d}/one.png", 1, "--plot draws two or more features, but"),
    # Hand-edited model files: one line naming the file and the field, never NaN or a traceback.
    (
        "predict {d}/not-pd.npz {d}/data.csv",
        1,
        "not-pd.npz' is a damaged gmmjax model file: 'full covariance' should be symmetric, positive-definite: "
        "covariances (component 0) must be positive definite",
    ),
    (
        "score {d}/nan-weights.npz {d}/data.csv",
        1,
        "nan-weights.npz' is a damaged gmmjax model file: weights contains NaN",
    ),
    ("predict {d}/three-weights.npz {d}/data.csv", 1, "weights must have shape (2,), got (3,)"),
    ("predict {d}/version0.npz {d}/data.csv", 1, "format_version must be a positive integer"),
    ("predict {d}/unknown-key.npz {d}/data.csv", 1, "hyperparameters has an unknown key 'frobnicate'"),
    ("predict {d}/string-means.npz {d}/data.csv", 1, "means must be an array of floating-point numbers"),
    ("sample {d}/object.npz", 1, "its field 'weights' is an array of Python objects"),
]


@pytest.mark.parametrize("args, expected_code, message", BAD_INPUTS, ids=[a for a, _, _ in BAD_INPUTS])
def test_bad_input_fails_with_one_line(work, args, expected_code, message):
    argv = args.format(d=work.dir, m=work.model_path).split()
    code, out, err = cli(*argv)
    assert code == expected_code, (code, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith((f"gmmjax {argv[0]}: error: ", "gmmjax: error: ")), err
    assert message.format(d=work.dir) in err, err
    assert "Traceback" not in err and out == ""


def test_closed_output_pipe_stops_quietly(work, monkeypatch, capsys):
    """`gmmjax sample MODEL | head`: the reader leaves; no error message, SIGPIPE's exit code."""

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = _cli.main(["sample", str(work.model_path), "-n", "5"])
    assert code == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["fit", "select"])
def test_plot_without_matplotlib_fails_before_fitting(work, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    code, out, err = cli(command, work.data_csv, "-k", 2, "--plot", work.dir / "nofig.png")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert "--plot needs matplotlib and gmmjax.plot" in err and "pip install 'gmmjax[plots]'" in err
    assert not (work.dir / "nofig.png").exists()


def test_fit_plot_saves_a_picture(work):
    if importlib.util.find_spec("gmmjax.plot") is None:
        pytest.skip("gmmjax.plot does not exist yet (plots branch); this runs once it is merged")
    image = pytest.importorskip("matplotlib.image")
    path = work.dir / "fit.png"
    code, out, err = cli("fit", work.data_csv, "-k", 2, "--plot", path)
    assert code == 0, err
    assert f"picture saved to {path}" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200 and pixels[..., :3].std() > 0.05


# -- select -------------------------------------------------------------------------------------------
SELECT_TYPES = ("full", "diag")


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """One ``gmmjax select`` run: test_model_selection's data (three well-separated blobs) and
    configuration, so that the selection program compiles once for both files."""
    w = Work()
    w.dir = d = tmp_path_factory.mktemp("select")
    w.X = O.make_blobs(n=150, d=2, k=3, seed=4, spread=6.0)[0].astype(np.float32)
    w.data, w.model_path, w.plot_path = d / "blobs.npy", d / "best.npz", d / "bic.png"
    np.save(w.data, w.X)
    w.run = cli(
        "select",
        w.data,
        "-k",
        "1:3",
        "--covariance-type",
        ",".join(SELECT_TYPES),
        "-o",
        w.model_path,
        "--plot",
        w.plot_path,
    )
    # The oracle: the library's functional entry on the same data with the same key (seed 0).
    w.oracle = gj.select_num_components(jax.random.key(0), w.X, 3, covariance_types=SELECT_TYPES)
    return w


SELECT_ROW = re.compile(
    r"^(full|tied|diag|spherical)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(yes|no)"
    r"(  <- best by (BIC|AIC|ICL))?$",
    flags=re.M,
)


def check_select_table(out, oracle, criterion):
    """The printed table is ``oracle`` (a SelectionResult), row by row, with its winner marked."""
    rows = SELECT_ROW.findall(out)
    expected = [(t, k) for t in oracle.covariance_types for k in np.asarray(oracle.num_components).tolist()]
    assert [(row[0], int(row[1])) for row in rows] == expected, out
    for index, row in enumerate(rows):
        t, j = divmod(index, len(oracle.num_components))
        for column, name in ((2, "bic"), (3, "aic"), (4, "icl")):  # 4 decimals printed
            assert float(row[column]) == pytest.approx(float(getattr(oracle, name)[t, j]), abs=1e-4), (name, row)
        assert float(row[5]) == pytest.approx(float(oracle.mean_log_likelihood[t, j]), abs=1e-6)
        assert int(row[6]) == int(oracle.n_iter[t, j])
        assert row[7] == ("yes" if oracle.converged[t, j] else "no")
    marked = [index for index, row in enumerate(rows) if row[8]]
    best = int(oracle.best_type_index) * len(oracle.num_components) + int(oracle.best_index)
    assert marked == [best] and rows[best][9] == criterion.upper(), out
    best_k, best_type = int(oracle.best_num_components), oracle.best_covariance_type
    assert (
        f"best by {criterion.upper()}: K={best_k}, {best_type} covariances "
        f"({criterion.upper()} {float(oracle.scores[int(oracle.best_type_index), int(oracle.best_index)]):.4f})" in out
    ), out


def test_select_prints_the_table_select_num_components_computes(selected):
    code, out, err = selected.run
    assert code == 0 and err == "", err
    check_select_table(out, selected.oracle, "bic")
    assert "150 samples × 2 features, K = 1..3, covariance full, diag, 1 restart each, seed 0" in out
    # Three well-separated round blobs: the known answer.
    assert "best by BIC: K=3" in out


def test_select_saves_the_model_the_estimator_selects(selected):
    saved = GaussianMixtureModel.load(selected.model_path)
    assert f"best model saved to {selected.model_path}" in selected.run[1]
    reference = GaussianMixtureModel.select(selected.X, 3, covariance_types=SELECT_TYPES, seed=0)
    assert (saved.num_components, saved.covariance_type) == (reference.num_components, reference.covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(saved, name), getattr(reference, name), err_msg=name)
    assert saved.n_iter_ == reference.n_iter_ and saved.converged_ == reference.converged_


def test_select_criterion_and_k_forms(selected):
    # -k 3 means 1..3 and --criterion is data to the compiled program: no new compilation.
    code, out, err = cli("select", selected.data, "-k", 3, "--covariance-type", "full,diag", "--criterion", "aic")
    assert code == 0 and err == "", err
    oracle = gj.select_num_components(jax.random.key(0), selected.X, 3, covariance_types=SELECT_TYPES, criterion="aic")
    check_select_table(out, oracle, "aic")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1:10", tuple(range(1, 11))),
        ("3:3", (3,)),
        ("4", (1, 2, 3, 4)),
        ("1", (1,)),
        ("8,2,4", (2, 4, 8)),
        ("2, 5", (2, 5)),
    ],
)
def test_select_k_accepts_ranges_counts_and_lists(text, expected):
    assert _cli._num_components_range(text) == expected


@pytest.mark.parametrize(
    "text, expected", [("all", gj.COVARIANCE_TYPES), ("tied", ("tied",)), ("spherical,full", ("spherical", "full"))]
)
def test_select_covariance_types(text, expected):
    assert _cli._covariance_types(text) == expected


def test_select_plot_saves_a_picture(selected):
    image = pytest.importorskip("matplotlib.image")
    code, out, _ = selected.run
    assert code == 0 and f"picture saved to {selected.plot_path}" in out
    raw = selected.plot_path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 5_000
    pixels = image.imread(selected.plot_path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500 and pixels[..., :3].std() > 0.05
    colors = np.unique(np.round(pixels[::2, ::2, :3].reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colors) > 50  # lines in several colours, text, stars: not a blank canvas


# -- Parquet and Zarr: what fit streams, predict, score and select read into memory -------------------
@pytest.fixture(scope="module")
def stores(work, selected, tmp_path_factory):
    """The commands' data as Parquet and Zarr: ``work.X`` as a Parquet file with a string column
    between the features (so it needs --columns), as a folder of two Parquet shards, with one
    null, and as a Zarr array; ``selected.X`` as a Parquet file and a Zarr array."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    zarr = pytest.importorskip("zarr", minversion="3")
    w = Work()
    w.dir = d = tmp_path_factory.mktemp("stores")
    X, blobs = work.X, selected.X
    pq.write_table(
        pa.table({"x": X[:, 0], "label": ["a"] * len(X), "y": X[:, 1]}), d / "data.parquet", row_group_size=250
    )
    (d / "shards").mkdir()
    pq.write_table(pa.table({"x": X[:400, 0], "y": X[:400, 1]}), d / "shards" / "part-0.parquet")
    pq.write_table(pa.table({"x": X[400:, 0], "y": X[400:, 1]}), d / "shards" / "part-1.parquet")
    null = np.zeros(len(X), bool)
    null[5] = True
    pq.write_table(pa.table({"x": pa.array(X[:, 0], mask=null), "y": X[:, 1]}), d / "null.parquet")
    pq.write_table(pa.table({"x0": blobs[:, 0], "x1": blobs[:, 1]}), d / "blobs.parquet", row_group_size=64)
    for name, array in (("data.zarr", X), ("blobs.zarr", blobs)):
        zarr.create_array(str(d / name), shape=array.shape, chunks=(128, 2), dtype=array.dtype)[:] = array
    return w


@pytest.mark.parametrize(
    "name, options",
    [
        ("data.parquet", ["--columns", "x,y"]),
        ("data.parquet", ["--columns", "0,2"]),  # 0-based indices of the Parquet columns
        ("shards", []),
        ("data.zarr", []),
    ],
)
def test_predict_and_score_read_parquet_and_zarr(work, stores, name, options):
    model, X, data = work.model, work.X, stores.dir / name
    code, out, err = cli("predict", work.model_path, data, *options)
    assert code == 0 and err == "", err
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), model.predict(X))
    assert cli("predict", work.model_path, data, *options, "--proba", "-o", stores.dir / "proba.npy")[0] == 0
    np.testing.assert_array_equal(np.load(stores.dir / "proba.npy"), model.predict_proba(X))
    code, out, err = cli("score", work.model_path, data, *options, "--per-sample", stores.dir / "logp.npy")
    assert code == 0 and err == "", err
    assert _number(r"mean log-likelihood (\S+)", out) == pytest.approx(model.score(X), rel=1e-8)
    assert "(600 samples)" in out
    np.testing.assert_array_equal(np.load(stores.dir / "logp.npy"), model.score_samples(X))


def test_zarr_columns_by_index_and_parquet_nulls_with_dropna(work, stores):
    model, X = work.model, work.X
    code, out, err = cli("score", work.model_path, stores.dir / "data.zarr", "--columns", "1,0")
    assert code == 0 and err == "", err
    assert _number(r"mean log-likelihood (\S+)", out) == pytest.approx(model.score(X[:, ::-1]), rel=1e-8)
    null = stores.dir / "null.parquet"
    code, out, err = cli("score", work.model_path, null)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "null.parquet contains 1 NaN or infinite value(s) (the first in data row 6, column index 0)" in err
    code, out, err = cli("score", work.model_path, null, "--dropna")
    assert code == 0, err
    assert err == "gmmjax score: note: --dropna left out 1 row with missing values (row 6); 599 remain\n"
    assert _number(r"mean log-likelihood (\S+)", out) == pytest.approx(model.score(np.delete(X, 5, 0)), rel=1e-6)


@pytest.mark.parametrize("name", ["blobs.parquet", "blobs.zarr"])
def test_select_reads_parquet_and_zarr(selected, stores, name):
    code, out, err = cli("select", stores.dir / name, "-k", "1:3", "--covariance-type", ",".join(SELECT_TYPES))
    assert code == 0 and err == "", err
    check_select_table(out, selected.oracle, "bic")  # the .npy run's oracle: the same rows
    assert "150 samples × 2 features" in out
    assert ("features  x0, x1" in out) == name.endswith(".parquet")  # Parquet's column names


def test_parquet_and_zarr_errors_are_one_line(work, stores, monkeypatch):
    d, m = stores.dir, work.model_path
    for args, message in [
        (("predict", m, d / "data.parquet"), "data.parquet: column 'label' (string) is not numeric"),
        (("predict", m, d / "data.parquet", "--columns", "x,z"), "--columns entry 'z' is not a column name"),
        (("predict", m, d / "data.parquet", "--columns", "x,0"), "--columns x,0 uses a column more than once"),
        (("score", m, d / "data.zarr", "--delimiter", ";"), "--delimiter read text tables (.csv, .txt, .tsv)"),
        (("score", m, d / "data.zarr", "--key", "a"), "--key selects an array inside an .npz file"),
        (("select", d / "missing.parquet", "-k", 3), "missing.parquet: no such file"),
    ]:
        code, _, err = cli(*args)
        assert code == 1 and message in err and len(err.splitlines()) == 1, (args, err)
    for module in ("pyarrow", "pyarrow.parquet", "zarr"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    parquet = "reading Parquet files needs the pyarrow package"
    for args, message in [
        (("predict", m, d / "data.parquet", "--columns", "x,y"), parquet),
        (("score", m, d / "shards"), parquet),
        (("select", d / "blobs.parquet", "-k", 3), parquet),
        (("fit", d / "shards", "-k", 2), parquet),
        (("score", m, d / "data.zarr"), "reading a Zarr array needs the zarr package"),
    ]:
        code, _, err = cli(*args)
        extra = "zarr" if "Zarr" in message else "parquet"
        assert code == 1 and len(err.splitlines()) == 1, (args, err)
        assert message in err and f"pip install 'gmmjax[{extra}]'" in err, (args, err)


def test_fit_verbose_shows_progress_on_stderr(work):
    # The configuration of tests/test_progress.py's single-restart fit: compiled once.
    code, out, err = cli(
        "fit",
        work.data_csv,
        "-k",
        2,
        "--init-params",
        "k-means++",
        "--tol",
        "1e-4",
        "--verbose",
        "--verbose-interval",
        3,
    )
    assert code == 0, err
    n_iter = int(_number(r"iterations (\d+)", out))
    assert f"iteration {n_iter}/100" in err and "restarts converged 1/1" in err
    assert "EM" not in out


def test_python_m_gmmjax_fit_in_a_subprocess(work):
    proc = _run("fit", work.data_npy, "-k", 2, "-o", work.dir / "subprocess.npz", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "iterations" in proc.stdout and "BIC" in proc.stdout
    np.testing.assert_allclose(
        GaussianMixtureModel.load(work.dir / "subprocess.npz").means_, work.model.means_, rtol=1e-6
    )


def _console_script():
    for candidate in (os.path.join(sysconfig.get_path("scripts"), "gmmjax"), shutil.which("gmmjax")):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def test_console_script_gmmjax(work):
    script = _console_script()
    if script is None:
        pytest.skip("the gmmjax console script is not installed (python -m pip install -e .)")
    proc = subprocess.run(
        [script, "score", str(work.model_path), str(work.data_csv)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert _number(r"mean log-likelihood (\S+)", proc.stdout) == pytest.approx(work.model.score(work.X), rel=1e-6)


# -- warnings, memory, start-up time, compilation cache -------------------------------------------
def test_demo_warnings_are_one_line(monkeypatch):
    # One EM iteration does not converge: the estimator's own ConvergenceWarning, as the demo
    # shows it. (The demo's data never made the library warn reliably: its "3 samples, a
    # component collapses" case stopped collapsing with greedy k-means++ seeding.)
    import gmmjax as gj

    fit = gj.GaussianMixtureModel.fit

    def fit_one_iteration(self, X, *args, **kwargs):
        self.num_iters = 1
        return fit(self, X, *args, **kwargs)

    monkeypatch.setattr(gj.GaussianMixtureModel, "fit", fit_one_iteration)
    code, out, err = cli("demo", "-n", 40)
    assert code == 0 and "gmmjax demo:" in out
    lines = err.splitlines()
    assert lines and all(line.startswith("gmmjax demo: warning: ") for line in lines), err
    assert "UserWarning" not in err and ".py:" not in err  # not Python's two-line format


def test_sample_refuses_more_than_memory_before_allocating(work):
    with pytest.raises(MemoryError, match="Drawing 1000000000000 samples of 2 features needs about"):
        work.model.sample(10**12)
    from gmmjax._validation import check_sample_memory, sample_memory_bytes

    params = work.model.params
    assert sample_memory_bytes(10, params) >= 10 * (2 * 4 + 4)  # at least the float32 samples and labels
    check_sample_memory(10, params, available=10**6)
    with pytest.raises(MemoryError, match="more than the 100 bytes available: draw fewer samples"):
        check_sample_memory(10, params, available=100)


# The console script's launcher (pyproject.toml: gmmjax = "gmmjax_cli:main"), run as the script runs it.
LAUNCHER = """
import sys
from gmmjax_cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(f"exit {code}, jax imported: {'jax' in sys.modules}", file=sys.stderr)
"""


def _launch(*args, **env):
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, *map(str, args)], capture_output=True, text=True, timeout=180, env=_env(**env)
    )


def test_console_script_entry_is_the_launcher():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["gmmjax"] == "gmmjax_cli:main"


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["fit", "--help"],
        ["select", "--help"],
        ["predict", "--help"],
        ["fit", "data.csv", "-k", "0"],
        ["select", "data.csv", "-k", "5:2"],
        ["select", "data.csv", "-k", "3", "--covariance-type", "banana"],
        ["frobnicate"],
        [],
    ],
    ids=lambda args: " ".join(args) or "no-command",
)
def test_help_and_argument_errors_do_not_import_jax(args):
    proc = _launch(*args)
    expected = 0 if "--help" in args else 2
    assert proc.stderr.splitlines()[-1] == f"exit {expected}, jax imported: False", proc.stderr
    assert "Traceback" not in proc.stderr
    if expected == 0:
        assert proc.stdout.startswith("usage: gmmjax")


def test_launcher_runs_a_command_and_fills_the_compilation_cache(work, tmp_path):
    cache = tmp_path / "xla"
    proc = _launch("score", work.model_path, work.data_csv, GMMJAX_NO_CACHE=None, GMMJAX_CACHE_DIR=str(cache))
    assert proc.stderr.splitlines()[-1] == "exit 0, jax imported: True", proc.stderr
    assert _number(r"mean log-likelihood (\S+)", proc.stdout) == pytest.approx(work.model.score(work.X), rel=1e-6)
    assert any(p.is_file() for p in cache.rglob("*")), "the command did not use the persistent cache"


@pytest.mark.parametrize("how", ["default", "--no-cache", "GMMJAX_NO_CACHE=1", "GMMJAX_NO_CACHE=0"])
def test_compilation_cache_is_on_unless_turned_off(work, monkeypatch, how):
    from gmmjax import _cache

    calls = []
    monkeypatch.setattr(_cache, "enable_compilation_cache", lambda *a: calls.append(a))
    monkeypatch.delenv("GMMJAX_NO_CACHE")
    if how.startswith("GMMJAX_NO_CACHE"):
        monkeypatch.setenv("GMMJAX_NO_CACHE", how.split("=")[1])
    argv = ["sample", work.model_path, "-n", 5] + (["--no-cache"] if how == "--no-cache" else [])
    assert cli(*argv)[0] == 0
    assert len(calls) == (1 if how in ("default", "GMMJAX_NO_CACHE=0") else 0)


def test_unusable_cache_folder_is_one_warning(work, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.delenv("GMMJAX_NO_CACHE")
    monkeypatch.setenv("GMMJAX_CACHE_DIR", str(blocker / "xla"))  # below a file: cannot be created
    code, out, err = cli("sample", work.model_path, "-n", 5)
    assert code == 0 and len(out.splitlines()) == 5
    assert err.startswith("gmmjax sample: warning: the compilation cache is off") and len(err.splitlines()) == 1


# -- text tables: header, index column, columns, missing values, delimiter, decimal mark ----------
def _table(tmp_path, text, name="t.csv", **options):
    path = tmp_path / name
    path.write_text(text)
    return _cli.read_data(path, None, _cli.TableOptions(**options))


def test_pandas_and_r_row_labels_are_not_features(tmp_path):
    # What pandas.DataFrame.to_csv() writes (index first, its header name empty), with named and
    # with integer column names, and R's write.table (no name above the row names).
    for text in (",x,y\n0,1.5,2.5\n1,3.5,4.5\n", ",0,1\n0,1.5,2.5\n1,3.5,4.5\n", '"x" "y"\n"1" 1.5 2.5\n"2" 3.5 4.5\n'):
        data = _table(tmp_path, text, name="t.txt")
        np.testing.assert_array_equal(data.X, [[1.5, 2.5], [3.5, 4.5]])
        assert data.feature_names in (("x", "y"), ("0", "1")), (text, data.feature_names)
    data = _table(tmp_path, "id,x,y\n7,1.5,2.5\n8,3.5,4.5\n", index_col="id")
    np.testing.assert_array_equal(data.X, [[1.5, 2.5], [3.5, 4.5]])
    assert data.feature_names == ("x", "y")
    assert _table(tmp_path, "1,1.5,2.5\n2,3.5,4.5\n", index_col="0").X.tolist() == [[1.5, 2.5], [3.5, 4.5]]


def test_numeric_header_line_needs_header(tmp_path):
    text = "1,2\n3,4\n5,6\n"
    assert _table(tmp_path, text).X.shape == (3, 2)  # cannot be told from data
    with pytest.raises(_cli.CLIError, match="line 1, column index 0: missing value"):
        _table(tmp_path, ",2\n3,4\n")  # a missing first value, not a header
    data = _table(tmp_path, text, header=True)
    assert data.X.tolist() == [[3, 4], [5, 6]] and data.feature_names == ("1", "2")
    with pytest.raises(_cli.CLIError, match=r"t.csv, line 1, column index 0: cannot read 'x' as a number"):
        _table(tmp_path, "x,y\n1,2\n", header=False)


def test_columns_by_name_or_index(tmp_path):
    text = "id,a,b,c\n1,10,20,30\n2,11,21,31\n"
    data = _table(tmp_path, text, columns=("c", "a"))
    assert data.X.tolist() == [[30, 10], [31, 11]] and data.feature_names == ("c", "a")
    assert _table(tmp_path, text, columns=("1", "3")).X.tolist() == [[10, 30], [11, 31]]
    assert _table(tmp_path, "0,1,x\n5,6,7\n", columns=("1",)).X.tolist() == [[6]]  # the name "1" wins
    for columns, message in [
        (("d",), "--columns entry 'd' is not a column name (its columns are 'id', 'a'"),
        (("4",), "--columns entry 4 is out of range: the file has 4 columns (0 to 3)"),
        (("a", "1"), "uses a column more than once"),
    ]:
        with pytest.raises(_cli.CLIError, match=re.escape(message)):
            _table(tmp_path, text, columns=columns)
    np.save(tmp_path / "a.npy", np.arange(6.0).reshape(2, 3))
    assert _cli.load_data(tmp_path / "a.npy", options=_cli.TableOptions(columns=("2", "0"))).tolist() == [
        [2, 0],
        [5, 3],
    ]
    with pytest.raises(_cli.CLIError, match="'x' is not a column name .it has no header line"):
        _cli.load_data(tmp_path / "a.npy", options=_cli.TableOptions(columns=("x",)))


def test_missing_values_are_an_error_or_dropped(tmp_path):
    text = "x,y,note\n1,2,\n3,,a\n5,NA,b\n7,8,c\n"  # the empty 'note' is in an unused column
    for line, what in [(3, "an empty field"), (4, "'NA'")]:
        with pytest.raises(_cli.CLIError) as info:
            _table(tmp_path, text.replace("3,,a", "3,4,a") if line == 4 else text, columns=("x", "y"))
        assert f"t.csv, line {line}, column 'y' (index 1): missing value ({what})" in str(info.value)
        assert "--dropna" in str(info.value)
    data = _table(tmp_path, text, columns=("x", "y"), dropna=True)
    assert data.X.tolist() == [[1, 2], [7, 8]] and data.dropped_lines == (3, 4)
    with pytest.raises(_cli.CLIError, match="none is left after --dropna"):
        _table(tmp_path, "x\nNA\n\nNaN\n", dropna=True)


def test_delimiters_and_decimal_comma(tmp_path):
    expected = [[1.5, -2.0], [3.25, 4.0]]
    assert _table(tmp_path, "a;b\n1,5;-2\n3,25;4\n", decimal=",").X.tolist() == expected
    assert _table(tmp_path, "a\tb\n1,5\t-2\n3,25\t4\n", decimal=",").X.tolist() == expected
    assert _table(tmp_path, "a|b\n1.5|-2\n3.25|4\n", delimiter="|").X.tolist() == expected
    assert _table(tmp_path, "a  b\n1.5\t-2\n3.25   4\n", delimiter="whitespace").X.tolist() == expected
    with pytest.raises(_cli.CLIError, match=r"cannot read '1,5' as a number \(the decimal mark is '.': see --decimal"):
        _table(tmp_path, "a;b\n1,5;-2\n")


def test_fit_on_pandas_csv_names_features_and_uses_only_them(work, monkeypatch):
    """A DataFrame's to_csv: the index is left out (the same model as from the plain file), and
    the header's names are in the summary and on the --plot axes."""
    path = work.dir / "pandas.csv"
    np.savetxt(
        path,
        np.column_stack([np.arange(len(work.X)), work.X]),
        delimiter=",",
        header=",height,width",
        comments="",
        fmt=["%d", "%.9g", "%.9g"],
    )
    code, out, err = cli("fit", path, "-k", 2, "-o", work.dir / "pandas.npz")
    assert code == 0 and err == "", err
    assert "600 samples × 2 features" in out and "features  height, width" in out
    np.testing.assert_array_equal(GaussianMixtureModel.load(work.dir / "pandas.npz").means_, work.model.means_)
    if importlib.util.find_spec("matplotlib") is None:
        return
    import matplotlib.figure

    labels = []
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "savefig",
        lambda fig, *a, **k: labels.append((fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel())),
    )
    assert cli("fit", path, "-k", 2, "--plot", work.dir / "named.png")[0] == 0
    assert labels == [("height", "width")]


def test_dropna_note_and_text_only_options(work):
    path = work.dir / "with-na.csv"
    lines = work.data_csv.read_text().splitlines()
    lines[5] = "NA," + lines[5].split(",")[1]
    path.write_text("\n".join(lines) + "\n")
    code, out, err = cli("score", work.model_path, path, "--dropna")
    assert code == 0, err
    assert err == "gmmjax score: note: --dropna left out 1 row with missing values (line 6); 599 remain\n"
    assert "(599 samples)" in out
    code, out, err = cli("score", work.model_path, work.data_npy, "--delimiter", ";")
    assert code == 1 and "--delimiter read text tables (.csv, .txt, .tsv); " in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ("--delimiter ab", "expected one character, tab or whitespace"),
        ("--delimiter 5", "cannot separate numbers"),
        ("--decimal ab", "expected one character such as . or ,"),
        ("--columns x,,y", "expected a comma list of column names"),
    ],
)
def test_bad_table_options_are_argument_errors(work, args, message):
    code, out, err = cli("fit", work.data_csv, "-k", 2, *args.split())
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
