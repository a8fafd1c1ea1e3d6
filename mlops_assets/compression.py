"""Compression candidates and the four-axis scorecard (issue 5)."""
