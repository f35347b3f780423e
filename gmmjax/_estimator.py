class ConvergenceWarning(UserWarning): pass
class GaussianMixtureModel: pass
