#!/usr/bin/env bash
# Serves the page built by tools/web-build.sh on http://127.0.0.1:${PORT:-8080}/.
set -euo pipefail
cd "$(dirname "$0")/.."
exec node web/serve.mjs --port "${PORT:-8080}"
