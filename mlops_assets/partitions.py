"""Monthly partitions of 2013, the span of the shipped flight data; keys look like '2013-01'."""

import dagster as dg

MONTH_FORMAT = "%Y-%m"

monthly_partitions = dg.MonthlyPartitionsDefinition(start_date="2013-01", end_date="2014-01", fmt=MONTH_FORMAT)
