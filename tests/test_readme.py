"""The README's examples run as written (in order, sharing one namespace)."""

from __future__ import annotations

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README should show the estimator and the functional examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # The original example recovers the generating weights (components matched by their means).
    model = namespace["model"]
    order = np.argsort(np.asarray(model.means)[:, 0])
    np.testing.assert_allclose(np.asarray(model.weights)[order], [0.6, 0.4], atol=0.06)
    assert namespace["fits"].means.shape == (100, 2, 2)
