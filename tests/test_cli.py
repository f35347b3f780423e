"""Command line: ``python -m gmmjax demo`` and ``--help``, in a subprocess and in-process."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from gmmjax import _cli

TRUE_WEIGHTS = [0.6, 0.4]
TRUE_MEANS = [[0.0, 0.0], [3.0, 3.0]]


def _run(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "gmmjax", *args], capture_output=True, text=True,
                          timeout=timeout)


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
    assert "--num-samples must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _cli.main(["fit"])
    assert exc.value.code == 2
    assert "invalid choice: 'fit'" in capsys.readouterr().err
