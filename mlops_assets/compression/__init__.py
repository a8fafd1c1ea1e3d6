"""The compression stage: pruned, distilled and int8 candidates of the trained model, and the scorecard
that names the challenger.

One module per candidate kind, each with its asset, config and parity check: pruning.py,
distillation.py, float_choice.py (which float candidate is quantized), int8.py and model_scorecard.py;
float_candidates.py is what the float ones share. quantization.py, scorecard.py and session_probe.py
(the subprocess that measures a session) are plain logic.
"""
