"""The evaluation time of a run that reads delayed labels, as one config field shared by every stage that does."""

from datetime import UTC, datetime

import dagster as dg


class AsOfConfig(dg.Config):
    as_of: str | None = None
    """Evaluation time (ISO-8601, UTC when no zone is given); labels that arrived later are not used. Default: now."""

    def evaluation_time(self) -> datetime:
        if self.as_of is None:
            return datetime.now(UTC)
        try:
            moment = datetime.fromisoformat(self.as_of)
        except ValueError as error:
            raise dg.Failure(f"as_of {self.as_of!r} is not an ISO-8601 time") from error
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
