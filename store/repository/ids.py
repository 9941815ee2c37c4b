"""Ids of new rows: a type prefix, so an id in a log or URL says what it names, and 64 random bits, so
API processes need no coordination to mint them and a client cannot guess another's."""

from __future__ import annotations

import secrets


def new_job_id() -> str:
    return "job_" + secrets.token_hex(8)


def new_model_id() -> str:
    """Public so an upload can name its file before the row exists."""
    return "mdl_" + secrets.token_hex(8)


def new_dataset_id() -> str:
    """Public so an upload can unpack into its folder before the row exists."""
    return "ds_" + secrets.token_hex(8)
