#!/usr/bin/env bash
# Install the Node load generator's dependencies (socket.io-client, ws) into bench/node_modules.
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
