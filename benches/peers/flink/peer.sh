#!/usr/bin/env bash
# Runs the Flink peer (peer.py) in its own virtualenv, creating it on first
# use: apache-flink 2.3.0 from PyPI (about 400 MB; it carries Flink's jars
# and starts a local mini-cluster on the machine's Java 17).
set -euo pipefail
venv="${PEERS_FLINK_VENV:-$HOME/.cache/laminardb/flink-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pyflink' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q apache-flink==2.3.0 >&2
fi
exec "$venv/bin/python" "$(dirname "$0")/peer.py" "$@"
