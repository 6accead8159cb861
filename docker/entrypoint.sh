#!/usr/bin/env bash
# Container entrypoint: `serve` (default) runs the HTTP server, `calibrate ARGS...` runs interlingua-calibrate.
set -euo pipefail
command="${1:-serve}"
shift || true
case "$command" in
  serve) exec interlingua-serve "$@" ;;
  calibrate) exec interlingua-calibrate "$@" ;;
  *) exec "$command" "$@" ;;
esac
