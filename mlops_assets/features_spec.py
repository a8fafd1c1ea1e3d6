"""The feature contract shared by every stage: which columns go in, what they mean, what is forbidden.

Only what is known when a flight is scheduled is a feature. The columns in LEAKY_COLUMNS are
measured after departure and must never reach a model.
"""

NUMERIC_FEATURES = ("hour", "day_of_week", "distance", "temp", "wind_speed", "precip", "visib")
CATEGORICAL_FEATURES = ("carrier", "origin", "dest")
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
TARGET = "is_late"
ROW_KEY = "flight_id"
LATE_THRESHOLD_MINUTES = 15

LEAKY_COLUMNS = ("dep_time", "dep_delay", "arr_time", "air_time", "arr_delay")

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
