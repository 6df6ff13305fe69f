#!/usr/bin/env bash
# examples/with_server.sh LASYNC SCRIPT [ARGS...]
#
# Runs a network example against the local test server, offline: starts
# spec/support/server.py on free 127.0.0.1 ports, runs `LASYNC SCRIPT URL ARGS...` with the
# server's base URL (also exported as LASYNC_TEST_URL), then stops the server. Exits with the
# example's status.
#
#   examples/with_server.sh build/lasync examples/fetch_seq_vs_gather.lua
#   examples/with_server.sh build/lasync examples/fetch_json_posts.lua
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 LASYNC SCRIPT [ARGS...]" >&2
  exit 2
fi
lasync=$1 script=$2
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
server_py=$here/../spec/support/server.py

tmp=$(mktemp -d)
server_pid=''
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The server exits by itself too if this script dies (it watches its parent).
python3 "$server_py" --ready-file "$tmp/ready" >/dev/null 2>"$tmp/server.err" &
server_pid=$!
for ((i = 0; i < 100; i++)); do # up to 10 s
  [ -s "$tmp/ready" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
port=$(sed -n 's/^READY http=\([0-9]*\) .*/\1/p' "$tmp/ready" 2>/dev/null)
if [ -z "$port" ]; then
  echo "$0: the test server did not start" >&2
  sed 's/^/    /' "$tmp/server.err" >&2
  exit 1
fi

export LASYNC_TEST_URL=http://127.0.0.1:$port
"$lasync" "$script" "$LASYNC_TEST_URL" "$@"
