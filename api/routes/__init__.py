"""One router per resource. Versioned routers carry the full `/v1/...` prefix themselves, so each route's
template (what metrics are labelled with) is the path a client calls."""

API_V1 = "/v1"
