"""The data contract's section of the configuration (`contract` of a RunConfig; see `tandem.core.config`):
which events mean what, the plausible time window of an event, and where catalogue images may come from
(owner: tandem.data.contract)."""

from __future__ import annotations

import datetime as dt
from dataclasses import field
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool

from tandem.core.config_schema import Names, section


def parse_instant(value: str) -> dt.datetime:
    """An ISO-8601 date or time as an aware UTC datetime (no zone = UTC); ValueError if it is not one."""
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 date or time (e.g. 1990-01-01 or 2030-01-01T00:00Z)") from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _as_text(value: Any) -> Any:
    # YAML reads an unquoted 1990-01-01 as a date: take it as the ISO string it was written as.
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value


def _instant(value: str) -> str:
    if value:
        parse_instant(value)
    return value


Instant = Annotated[str, BeforeValidator(_as_text), AfterValidator(_instant)]


@section("contract")
class ContractConfig:
    """How behaviour logs are read and which events mean what."""

    view_events: Annotated[Names, Field(min_length=1)] = field(
        default=("view", "click", "purchase"),
        metadata={"help": "events that count as 'viewed A' (the left side of a pair)"},
    )
    click_events: Annotated[Names, Field(min_length=1)] = field(
        default=("click", "purchase"),
        metadata={"help": "events that count as 'clicked B' (the right side of a pair)"},
    )
    other_events: Names = field(
        default=("impression",),
        metadata={"help": "events kept in the logs but never part of a pair (e.g. the search service's impressions)"},
    )
    check_images: StrictBool = field(
        default=True, metadata={"help": "open every catalogue image once and quarantine unreadable ones"}
    )
    min_ts: Instant = field(
        default="1990-01-01",
        metadata={"help": "earliest plausible event time (ISO-8601, UTC if no zone); earlier events are quarantined"},
    )
    max_ts: Instant = field(
        default="",
        metadata={"help": "latest plausible event time (ISO-8601); later events are quarantined; empty = load + 1 day"},
    )
    image_roots: Names = field(
        default=(),
        metadata={
            "help": "folders catalogue images may come from besides the catalogue file's own folder (relative "
            "to it); images elsewhere are dropped from their item, with the reason"
        },
    )
    allow_image_urls: StrictBool = field(
        default=False,
        metadata={
            "help": "keep image URLs (http://, s3://, ...) in the catalogue; nothing here fetches them, so by "
            "default they are dropped from their item, with the reason"
        },
    )

    def __post_init__(self) -> None:
        if self.max_ts and parse_instant(self.min_ts) >= parse_instant(self.max_ts):
            raise ValueError(
                f"contract.min_ts ({self.min_ts}) must be before contract.max_ts ({self.max_ts}), or no event is kept"
            )
