"""Drift monitoring and live performance (issue 4)."""
