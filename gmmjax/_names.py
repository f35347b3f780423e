"""Names of the library's options, in a module that imports nothing (no JAX).

The command line builds its argument parser from these, so ``gmmjax --help`` and argument
errors never import JAX; the modules that implement the options import them from here.
"""

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
CRITERIA = ("bic", "aic", "icl")
