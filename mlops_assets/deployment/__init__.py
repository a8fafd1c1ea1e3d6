"""The deployment stage: deployment, which waits until the serving fleet answers with the champion (assets.py)."""
