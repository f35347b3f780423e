"""Writes ``mclust_prior_reference.json``: mclust's own MAP results for the tests of ``prior=``.

Run by hand where R and mclust are installed (Debian/Ubuntu: ``apt-get install r-cran-mclust``):
``python tests/data/make_mclust_prior_reference.py``. It draws a small dataset and initial
responsibilities (NumPy, seeded), and for each of mclust's models VVV, EEE, VVI, VII (gmmjax's
full, tied, diag, spherical) asks mclust (``Rscript``) for

- ``defaultPrior(X, G, model)``: the default hyperparameters of ``priorControl()``;
- ``mstep(X, model, z, prior = priorControl())``: one MAP M-step from ``z``;
- ``me(X, model, z, prior = priorControl())`` with ``itmax`` M-steps and no convergence stop:
  the parameters after that many MAP EM iterations, and the log-likelihood ``me`` reports.

The JSON holds the inputs too, so the test needs neither R nor the same random numbers.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import tempfile

import numpy as np

N, D, K, ITERATIONS = 150, 3, 3, 12
MODELS = {"full": "VVV", "tied": "EEE", "diag": "VVI", "spherical": "VII"}

R_SCRIPT = r"""
suppressPackageStartupMessages(library(mclust))
args <- commandArgs(trailingOnly = TRUE)
X <- as.matrix(read.csv(args[1], header = FALSE))
z <- as.matrix(read.csv(args[2], header = FALSE))
itmax <- as.integer(args[3])
out <- file(args[4], "w")
put <- function(name, x) {
  x <- as.numeric(x)
  writeLines(paste(name, paste(sprintf("%.17g", x), collapse = " ")), out)
}
cat("mclust", as.character(packageVersion("mclust")), "\n", file = out)
for (model in c("VVV", "EEE", "VVI", "VII")) {
  p <- defaultPrior(X, ncol(z), model)
  put(paste(model, "prior_shrinkage"), p$shrinkage)
  put(paste(model, "prior_mean"), p$mean)
  put(paste(model, "prior_dof"), p$dof)
  put(paste(model, "prior_scale"), p$scale)
  m <- mstep(X, model, z, prior = priorControl())
  put(paste(model, "mstep_pro"), m$parameters$pro)
  put(paste(model, "mstep_mean"), m$parameters$mean)  # d x G, column-major: (G, d) row-major
  put(paste(model, "mstep_sigma"), m$parameters$variance$sigma)  # d x d x G: (G, d, d) symmetric
  e <- me(X, model, z, prior = priorControl(),
          control = emControl(tol = c(0, sqrt(.Machine$double.eps)), itmax = c(itmax, itmax)))
  put(paste(model, "me_iterations"), attr(e, "info")[1])
  put(paste(model, "me_pro"), e$parameters$pro)
  put(paste(model, "me_mean"), e$parameters$mean)
  put(paste(model, "me_sigma"), e$parameters$variance$sigma)
  put(paste(model, "me_loglik"), e$loglik)
}
close(out)
"""


def main() -> None:
    rng = np.random.default_rng(2007)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 5.0, 1.0]])
    labels = rng.integers(0, K, N)
    X = centers[labels] + rng.normal(size=(N, D)) * np.array([1.0, 0.5, 2.0]) + 10.0
    z = rng.dirichlet(np.full(K, 0.7), size=N)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        np.savetxt(tmp / "X.csv", X, delimiter=",", fmt="%.17g")
        np.savetxt(tmp / "z.csv", z, delimiter=",", fmt="%.17g")
        (tmp / "run.R").write_text(R_SCRIPT)
        subprocess.run(
            [
                "Rscript",
                str(tmp / "run.R"),
                str(tmp / "X.csv"),
                str(tmp / "z.csv"),
                str(ITERATIONS),
                str(tmp / "out.txt"),
            ],
            check=True,
        )
        lines = (tmp / "out.txt").read_text().splitlines()
    version = lines[0].split()[1]
    results: dict = {}
    for line in lines[1:]:
        model, name, *values = line.split()
        results.setdefault(model, {})[name] = [float(v) for v in values]
    reference = {
        "source": f"mclust {version} via tests/data/make_mclust_prior_reference.py",
        "iterations": ITERATIONS,
        "X": X.tolist(),
        "z": z.tolist(),
        "models": {cov: results[model] for cov, model in MODELS.items()},
    }
    path = pathlib.Path(__file__).with_name("mclust_prior_reference.json")
    path.write_text(json.dumps(reference) + "\n")
    print(f"wrote {path} (mclust {version})")


if __name__ == "__main__":
    main()
