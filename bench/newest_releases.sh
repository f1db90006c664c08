#!/usr/bin/env bash
# Runs the test suite against the newest releases of the libraries whose private details the
# server relies on (server/seams.py): aiohttp, python-engineio, python-socketio. Everything else
# stays at its pin. A throwaway venv under /tmp; the project's own .venv is not touched.
#
#   bench/newest_releases.sh                       # the whole suite
#   bench/newest_releases.sh tests/test_seams.py   # or any pytest arguments
#
# It prints the versions it tested, then pytest's summary. The version-pin test is skipped
# (SEAMS_IGNORE_VERSIONS=1): what matters here is which seams still exist and what still works.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d /tmp/newest-releases.XXXXXX)"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r requirements.txt -r requirements-dev.txt
"$venv/bin/pip" install -q --upgrade aiohttp python-engineio python-socketio
echo "pinned (server/seams.py) -> newest release:"
"$venv/bin/python" - <<'PY'
from server.seams import WRITTEN_FOR, installed_version
for library, pinned in WRITTEN_FOR.items():
    print(f"  {library}: {pinned} -> {installed_version(library)}")
PY
SEAMS_IGNORE_VERSIONS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
