"""The time window a monitoring run looks at: a half-open UTC range of logging times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pipelines.log.reader import log_days


@dataclass(frozen=True)
class Window:
    """A half-open UTC time window [start, end) of logging times."""

    start: datetime
    end: datetime

    @classmethod
    def last_hours(cls, hours: float, now: datetime | None = None) -> "Window":
        end = now or datetime.now(timezone.utc)
        return cls(end - timedelta(hours=hours), end)

    @classmethod
    def day(cls, day: str) -> "Window":
        """The UTC day `day` (YYYY-MM-DD); ValueError naming it otherwise."""
        try:
            start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
        except ValueError as exc:
            raise ValueError(f"a day must be YYYY-MM-DD, not {day!r}") from exc
        return cls(start, start + timedelta(days=1))

    def days(self) -> list[str]:
        return log_days(self.start, self.end)

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}
