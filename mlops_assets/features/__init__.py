"""The features stage: validated_features, the month's feature rows behind a Great Expectations gate.

assets.py holds the asset, its config and its checks, and reads validated months (load_features);
expectations.py is the Great Expectations suite built from the feature contract (mlops_assets/features_spec.py).
"""
