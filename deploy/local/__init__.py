"""The embedded deployment: the laptop dagster.yaml, the demo (`make demo`) and the run helpers it shares with tests."""
