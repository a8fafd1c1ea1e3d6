"""Monthly partitions over the data's span (mlops_assets/months.py); keys look like '2013-01'."""

import dagster as dg

from mlops_assets import months

monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=months.FIRST_MONTH, end_date=months.shift(months.LAST_MONTH, 1), fmt=months.MONTH_FORMAT
)
