"""Offline calibration: extract paired hidden states from two models, fit maps, evaluate, report."""
