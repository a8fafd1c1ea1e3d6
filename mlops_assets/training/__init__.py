"""The training stage: trained_model (seeded PyTorch, lineage in MLflow) and onnx_model, its ONNX export
with the preprocessing inside.

assets.py holds the assets and their config; modeling.py is the network, its preprocessing and its
export, with no Dagster.
"""
