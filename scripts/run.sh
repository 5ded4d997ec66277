#!/usr/bin/env bash
# Installs the project and starts the service on its embedded defaults
# (local model, in-process bus, SQLite in ./var): no keys, no servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The guarded protocol closes connections whose headers are slow or huge, the lean WebSocket
# protocol lets go of each session's handshake, and WebSocket compression is off: its zlib
# state is most of an idle session's memory (see the README). A client's WebSocket frame is
# held to 1 MiB (uvicorn's default is 16 MiB); the service refuses a message past 64 K
# characters unread (WS_MESSAGE_MAX_CHARS).
exec .venv/bin/uvicorn app.server:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" \
  --http app.api.http_protocol:GuardedHttpToolsProtocol --timeout-keep-alive 5 \
  --ws app.api.ws_protocol:LeanWebSocketsProtocol \
  --ws-per-message-deflate false --ws-max-size 1048576
