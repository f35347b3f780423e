"""The benchmark suite's smoke run (``python benchmarks/run.py --quick``) works end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # every workload at a small size, each in its own worker process: ≈40 s on 2 cores
def test_quick_benchmark_run_writes_report_and_plot(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-gmmx", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = (tmp_path / "RESULTS.md").read_text()
    for heading in (
        "## The limit",
        "## W1",
        "## W2",
        "## W3",
        "## W4",
        "## W5",
        "## W6",
        "## W7",
        "## W8",
        "## W9",
        "## R1",
        "## R2",
        "## M1",
    ):
        assert heading in report, heading
    assert "Failed workers" not in report
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    fits = [r for r in results if r["kind"] == "fit"]
    assert {r["library"] for r in fits} == {"gmmjax", "sklearn"}
    for r in fits:  # every library reached the same optimum region from the same start
        twin = next(o for o in fits if o["workload"] == r["workload"] and o["library"] != r["library"])
        assert abs(r["mean_log_likelihood"] - twin["mean_log_likelihood"]) < 1e-3 * abs(twin["mean_log_likelihood"])
        assert r["per_iter_s"] > 0 and r["peak_mb"] == r["peak_mb"]
    png = (tmp_path / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
