"""The detectors' names, importable without the models themselves (settings and CLI help use them at start-up)."""

DETECTOR_NAMES = ("zscore", "seasonal", "changepoint", "iforest", "ensemble", "profile")
DEFAULT_DETECTOR = "ensemble"  # the best on NAB (see the README's figures)
