"""The opt-in persistent compilation cache: a second process reuses the first one's programs."""

from __future__ import annotations

import json
import subprocess
import sys

# JAX reports every persistent-cache lookup as a monitoring event.
SCRIPT = """
import collections, json, sys
import jax
events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name]))
import numpy as np
import gmmjax as gj
path = gj.enable_compilation_cache(sys.argv[1])
gj.GaussianMixtureModel(2, 37, covariance_type="diag").fit(np.random.default_rng(0).normal(size=(300, 2)))
print(json.dumps({"path": str(path), "hits": events["/jax/compilation_cache/cache_hits"],
                  "misses": events["/jax/compilation_cache/cache_misses"]}))
"""


def test_second_process_reuses_compiled_fit(tmp_path):
    cache = tmp_path / "xla-cache"
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(cache)], capture_output=True, text=True, timeout=300, check=True
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0]["path"] == str(cache)
    assert runs[0]["misses"] > 0 and runs[0]["hits"] == 0, runs  # first process compiles and stores
    assert runs[1]["misses"] == 0 and runs[1]["hits"] == runs[0]["misses"], runs  # second one only loads
    assert any(p.is_file() for p in cache.rglob("*"))
