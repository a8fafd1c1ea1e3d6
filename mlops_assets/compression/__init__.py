"""The compression stage: pruned, distilled and int8 candidates of the trained model, and the scorecard
that names the challenger.

assets.py holds the assets, their config and parity checks; quantization.py, scorecard.py and
session_probe.py (the subprocess that measures a session) are plain logic.
"""
