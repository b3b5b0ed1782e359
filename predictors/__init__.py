"""Performance predictors following scikit-learn: ``fit(X, y) -> self``, ``predict(X)``, learned attributes
end in ``_``."""

from predictors.linear import DeviceMixtureRegressor, NNLSRegressor, solve_nnls

__all__ = ["DeviceMixtureRegressor", "NNLSRegressor", "solve_nnls"]
