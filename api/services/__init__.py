"""The rules behind the routes, with no HTTP in them; each module is named after the rule it holds.

- `spec_checks`: what a job spec needs from this server (dataset and teacher weights exist, are the
  caller's, fit each other).
- `sweep_plans`: a sweep request becomes child specs, every one checked like a job.
- `submissions`: submitting a job or a sweep: checked, committed, then enqueued.
- `model_uploads`, `dataset_uploads`: what an uploaded file must be to be kept, and how it is kept.
- `upload_staging`: the received file and the staging folders on DISTILL_HOME's filesystem.
- `errors`: the codes these rules add to `core.errors`.

Public functions take keyword arguments and raise the domain errors of `core.errors` (or the subclasses
in `api.services.errors`), each with a stable `code` and the `field` to blame; `api.errors` turns them
into HTTP answers in one place, so a route is its dependencies and one call.
"""
