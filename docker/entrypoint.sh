#!/bin/sh
# One image, several roles: `migrate`, `api`, `worker`, or any other command.
set -eu

case "${1:-api}" in
  migrate)
    exec distill migrate
    ;;
  api)
    shift || true
    exec distill api --host 0.0.0.0 --port "${PORT:-8000}" "$@"
    ;;
  worker)
    shift || true
    exec distill worker --concurrency "${WORKER_PROCESSES:-1}" "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
