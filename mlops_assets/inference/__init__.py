"""The inference stage: batch_predictions, the champion's scores for a month of validated rows (assets.py)."""
