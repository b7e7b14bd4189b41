"""The strict pydantic base every config section derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # strict: YAML's `true` is not a batch size and `1e12` is not an int (pydantic's lax
    # mode would turn them into 1 and 1000000000000); an int still serves as a float.
    # allow_inf_nan=False: `lr: .inf` or `.nan` would pass `gt=0` checks and train nothing.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)
