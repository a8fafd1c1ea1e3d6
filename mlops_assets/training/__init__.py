"""The training stage: trained_model (a seeded model of the configured family, lineage in MLflow) and
onnx_model, its ONNX export with the preprocessing inside.

assets.py holds the assets and their config; publish.py publishes a candidate (store, MLflow run,
lineage). Plain logic, no Dagster: family.py (what a model family provides), families.py (the table
`TrainConfig.family` names), mlp.py and logistic.py (the shipped families), preprocessing.py,
fit_loop.py, onnx_export.py and values.py (what flows to the next assets).
"""
