#!/usr/bin/env bash
# Install the benchmarks' dependencies:
#   - the Node load generators' packages (socket.io-client, ws) into bench/node_modules;
#   - the python-socketio peer (bench/psio_server.py: python-socketio's AsyncServer under
#     uvicorn, with uvloop, httptools and websockets from uvicorn[standard]) into the
#     project's virtualenv (.venv beside bench/, or $BENCH_PYTHON).
# Usage: bash bench/setup.sh   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup.sh: node and npm are required (Node >= 18)" >&2
    exit 1
fi

if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund
else
    npm install --no-audit --no-fund
fi

node -e 'require("socket.io-client"); require("ws"); console.log("bench: node deps OK (node " + process.version + ")")'

# The python-socketio peer of the fan-out benchmark (--only psio, the polling scenario).
PY="${BENCH_PYTHON:-../.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "setup.sh: no Python at $PY: create the project's .venv first (or set BENCH_PYTHON)" >&2
    exit 1
fi
"$PY" -m pip install -q --disable-pip-version-check 'python-socketio>=5.11' 'uvicorn[standard]>=0.30'
"$PY" -c 'import socketio, uvicorn, websockets, uvloop, httptools; from importlib.metadata import version as v; print("bench: python deps OK (python-socketio " + v("python-socketio") + ", uvicorn " + v("uvicorn") + ", websockets " + v("websockets") + ")")'
