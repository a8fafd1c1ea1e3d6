"""Numbers as a person reads them in the UI: four significant digits, whatever their scale."""

from collections.abc import Mapping

DIGITS = 4


def readable(metadata: Mapping[str, object]) -> dict[str, object]:
    """`metadata` with every plain float rounded to DIGITS significant digits (0.7171001 -> 0.7171,
    218734.9 -> 218700.0, 1.34e-07 stays 1.34e-07); everything else as it is."""
    return {key: float(f"{value:.{DIGITS}g}") if isinstance(value, float) else value for key, value in metadata.items()}
