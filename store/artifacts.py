"""Artifact storage on the local (or shared) filesystem under DISTILL_HOME (CONTRACT; filled in by store).

- `job_dir(settings, job_id) -> Path`: DISTILL_HOME/jobs/<job_id>/ (the engine's --out folder).
- `record_job_outputs(session, settings, job_id) -> list[Artifact]`: walks the job folder for
  student.safetensors, teacher.safetensors, metrics.json, heatmaps/*.png and records each through
  repository.add_artifact (checkpoints are not artifacts).
- `artifact_path(settings, artifact) -> Path`: the absolute file, refusing anything that resolves
  outside DISTILL_HOME.
- `content_type_for(name) -> str`.
"""
