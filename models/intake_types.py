"""Field types and the base model every intake event shares."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from models.identity import normalise_email, normalise_insurance_number, normalise_phone

Email = Annotated[str, Field(max_length=320), AfterValidator(normalise_email)]
InsuranceNumber = Annotated[str, Field(max_length=20), AfterValidator(normalise_insurance_number)]
Phone = Annotated[str, Field(max_length=40), AfterValidator(normalise_phone)]


class EventBase(BaseModel):
    """Unknown fields are refused, so a typo or a field we must not hold never slips in."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)

    at: AwareDatetime = Field(description="when the website recorded it, ISO 8601 with offset")


def context_now(info) -> datetime | None:
    """The intake's clock, passed as validation context (None when validating without one)."""
    return (info.context or {}).get("now")
