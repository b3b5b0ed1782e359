"""Performance predictors following scikit-learn: ``fit(X, y) -> self``, ``predict(X)``."""
