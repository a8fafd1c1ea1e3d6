"""The registry stage: registered_model (an MLflow model version), its promotion gate, and champion_model,
the alias the server follows (assets.py).
"""
