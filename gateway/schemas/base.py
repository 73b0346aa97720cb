"""What every request schema shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestSchema(BaseModel):
    # strict: a known field with the wrong JSON type is an error, never silently coerced;
    # extra="ignore": fields outside the table are ignored, as the contract says.
    model_config = ConfigDict(strict=True, extra="ignore")
