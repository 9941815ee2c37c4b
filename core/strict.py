"""The base of every spec model: unknown keys are an error.

A typo in a spec must not silently train the wrong thing. This lives apart from
core.spec so that loss terms and signal providers can declare their own spec
fields without importing the spec (which is built from them).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects keys it does not declare, naming them."""

    model_config = ConfigDict(extra="forbid")
