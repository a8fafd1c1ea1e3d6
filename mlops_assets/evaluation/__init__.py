"""The evaluation stage: evaluation_report, the challenger against the champion on the held-out month (assets.py)."""
