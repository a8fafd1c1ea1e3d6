"""Model serving: an Open Inference Protocol (KServe v2) gRPC server on ONNX Runtime.

It follows MLflow registry aliases, batches dynamically, validates inputs against the model's
signature, logs predictions for drift monitoring and exposes Prometheus metrics. It never imports
dagster.
"""
