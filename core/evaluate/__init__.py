"""How a distilled student is judged: test-set metrics, calibration, per-class detail.

`evaluate` computes the `metrics.json` fields; `calibration` holds the one binning ECE and
the reliability diagram share; `diagnostics` the per-class and per-bin detail.
"""

from core.evaluate.calibration import ECE_BINS, expected_calibration_error, reliability_bins
from core.evaluate.metrics import evaluate

__all__ = ["ECE_BINS", "evaluate", "expected_calibration_error", "reliability_bins"]
