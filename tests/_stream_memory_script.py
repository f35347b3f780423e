"""Run by test_streaming.py in a subprocess: streams a .npy file, prints the peak RSS in MiB.

Usage: python _stream_memory_script.py DATA.npy
"""

from __future__ import annotations

import sys

import jax

from gmmjax._streaming import fit_em_streaming

if __name__ == "__main__":
    result = fit_em_streaming(jax.random.key(0), sys.argv[1], 4, max_iter=2, tol=0.0, batch_size=65536)
    assert int(result.n_iter) == 2
    # VmHWM: this process's own peak since execve (ru_maxrss would include the parent's
    # resident memory at the fork, which Linux carries across execve)
    with open("/proc/self/status") as status:
        print(next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")))
