"""The monitoring stage: is the champion still looking at the data it learnt from, and is it still right?

Assets (each with its config): drift_report (drift_report.py), outcomes (outcomes.py) and
live_performance (live_performance.py), monthly partitions in the `monitoring` group. Their plain
logic sits beside them and imports no Dagster: the detector (detector.py, bands.py,
domain_classifier.py, stattests.py), served traffic as rows (served.py) and delayed labels
(performance.py); drift_metadata.py lays out the report's metadata. drift_sensor and
live_performance_sensor (sensors/drift.py) act on it.
"""
