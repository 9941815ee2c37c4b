"""The sweep rule: a sweep request becomes a plan of child specs only when every child could run here.

The grid is expanded into child specs (core.spec.sweep) under the configured child
limit, and each distinct child passes the same server checks a single job does
(api.services.spec_checks), so a bad combination is refused, named by its grid path,
before any row is written.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.services.errors import InvalidSweep, TooManyChildren
from api.services.spec_checks import check_children_against_server, check_no_control_characters
from api.sweep_schemas import SweepRequest
from core.spec.sweep import SweepError, expand
from store.settings import Settings
from store.sweeps import SweepPlan, request_document


def plan_sweep(request: SweepRequest, *, session: Session, settings: Settings, owner: str | None) -> SweepPlan:
    """The children of `request`, each checked against what `owner` may use; the sweep's name and ranking."""
    check_no_control_characters(request.model_dump(mode="json"))
    try:
        children = expand(request.base, request.grid, settings.sweep_max_children)
    except SweepError as error:
        refused = TooManyChildren if "limit is" in error.message else InvalidSweep
        raise refused(error.message, error.field) from None
    check_children_against_server(children, session=session, settings=settings, owner=owner)
    name = request.name or str(request.base.get("name") or "sweep")
    return SweepPlan(name=name, request=request_document(request.base, request.grid, request.rank_by),
                     rank_by=request.rank_by, children=children)
