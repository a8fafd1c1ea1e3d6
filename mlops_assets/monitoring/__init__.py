"""The monitoring stage: is the champion still looking at the data it learnt from, and is it still right?

Assets (each with its config): drift_report (drift_report.py), outcomes (outcomes.py) and
live_performance (live_performance.py), monthly partitions in the `monitoring` group. Their plain
logic sits beside them and imports no Dagster: the detector (detector.py, bands.py,
domain_classifier.py, stattests.py), served traffic as rows (served.py) and delayed labels
(performance.py); drift_metadata.py lays out the report's metadata. drift_sensor and
live_performance_sensor (sensors/drift.py) act on it.
"""

from mlops_assets.monitoring.automation import on_new_data
from mlops_assets.monitoring.drift_report import DriftConfig, drift_html_key, drift_report
from mlops_assets.monitoring.live_performance import LivePerformanceConfig, live_performance
from mlops_assets.monitoring.outcomes import OutcomesConfig, outcomes, outcomes_key

__all__ = [
    "DriftConfig",
    "LivePerformanceConfig",
    "OutcomesConfig",
    "drift_html_key",
    "drift_report",
    "live_performance",
    "on_new_data",
    "outcomes",
    "outcomes_key",
]
