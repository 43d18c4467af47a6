#!/usr/bin/env bash
# Install the benchmarks' dependencies:
#   - the Node load generators' packages (socket.io-client, ws; yjs, y-protocols and lib0 for
#     bench/yjsgen.mjs), the fan-out benchmark's Node peer, socket.io 4 (bench/sio_node_server.js),
#     and the Yjs benchmark's Node peer, @y/websocket-server 0.1.1 (the reference y-websocket
#     server of the yjs 13 line), into bench/node_modules;
#   - the python-socketio peer (bench/psio_server.py: python-socketio's AsyncServer under
#     uvicorn, with uvloop, httptools and websockets from uvicorn[standard]) and the Yjs
#     benchmark's Python peer, pycrdt-websocket 0.16.x (bench/yjs_pycrdt_server.py), into the
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
node -e 'require("socket.io"); console.log("bench: socket.io " + require("./node_modules/socket.io/package.json").version + " (the node peer)")'
node --input-type=module -e 'import "yjs"; import "y-protocols/sync"; import "lib0/encoding"; import "@y/websocket-server/utils"; import { readFileSync } from "node:fs"; const v = JSON.parse(readFileSync("node_modules/@y/websocket-server/package.json")).version; console.log("bench: yjs deps OK (@y/websocket-server " + v + ")")'

# The python-socketio peer of the fan-out benchmark (--only psio, the polling scenario).
PY="${BENCH_PYTHON:-../.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "setup.sh: no Python at $PY: create the project's .venv first (or set BENCH_PYTHON)" >&2
    exit 1
fi
"$PY" -m pip install -q --disable-pip-version-check 'python-socketio>=5.11' 'uvicorn[standard]>=0.30'
# The pycrdt-websocket peer of the Yjs benchmark (bench/yjs.py); it shares pycrdt with collabtrio.
"$PY" -m pip install -q --disable-pip-version-check 'pycrdt-websocket>=0.16,<0.17'
"$PY" -c 'import socketio, uvicorn, websockets, uvloop, httptools; from importlib.metadata import version as v; print("bench: python deps OK (python-socketio " + v("python-socketio") + ", uvicorn " + v("uvicorn") + ", websockets " + v("websockets") + ")")'
"$PY" -c 'import pycrdt.websocket; from importlib.metadata import version as v; print("bench: pycrdt-websocket " + v("pycrdt-websocket") + " (pycrdt " + v("pycrdt") + ")")'
