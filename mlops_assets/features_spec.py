"""The feature contract shared by every stage: which columns go in, their kinds, ranges and categories,
and what is forbidden. Features, Great Expectations, drift and the serving examples all read it here.

Only what is known when a flight is scheduled is a feature. The columns in LEAKY_COLUMNS are
measured after departure and must never reach a model.
"""

import json
from importlib import resources

NUMERIC_FEATURES = ("hour", "day_of_week", "distance", "temp", "wind_speed", "precip", "visib")
CATEGORICAL_FEATURES = ("carrier", "origin", "dest")
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
TARGET = "is_late"
ROW_KEY = "flight_id"
LATE_THRESHOLD_MINUTES = 15

LEAKY_COLUMNS = ("dep_time", "dep_delay", "arr_time", "air_time", "arr_delay")

# Physical ranges of the numeric features (checked with a tolerance for the odd bad sensor reading).
RANGES = {
    "hour": (0, 23),
    "day_of_week": (0, 6),
    "distance": (1, 6000),
    "temp": (-40, 130),  # Fahrenheit
    "wind_speed": (0, 120),  # mph
    "precip": (0, 5),  # inches per hour
    "visib": (0, 10),  # miles
}

# Every category of each categorical feature, from a data file shipped in the package (categories.json:
# every value seen in the 2013 data); replace that file when you bring your own data.
CATEGORIES: dict[str, list[str]] = json.loads(resources.files(__package__).joinpath("categories.json").read_text())

# Columns a source must provide (flights joined with hourly weather at the origin).
RAW_COLUMNS = (
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "carrier",
    "flight",
    "origin",
    "dest",
    "distance",
    "arr_delay",
    "temp",
    "wind_speed",
    "precip",
    "visib",
)
