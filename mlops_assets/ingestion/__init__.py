"""The ingestion stage: raw_flights, one monthly partition of the flight source as it arrives (assets.py)."""
