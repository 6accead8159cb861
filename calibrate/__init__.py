"""Offline calibration: extract paired hidden states from two models, fit maps, evaluate, report.

From Python::

    from calibrate import EvalConfig, FitConfig, evaluate, fit

    fitted = fit(FitConfig(source="smollm2", target="gemma3", out="maps"))
    report = evaluate(EvalConfig(maps=fitted.store, data="builtin:letters-qa", modes="embeds,replace"))
    print(report.markdown())

The CLI (``interlingua-calibrate``, ``calibrate.cli``) parses flags into the same configs and prints the same reports.
"""

from calibrate.config import ConfigError, EvalConfig, FitConfig
from calibrate.evaluation import EvalReport, evaluate
from calibrate.pipeline import FitResult, fit

__all__ = ["ConfigError", "EvalConfig", "EvalReport", "FitConfig", "FitResult", "evaluate", "fit"]
