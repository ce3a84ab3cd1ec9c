#!/usr/bin/env bash
# Property-based fuzzing of the management API with schemathesis, on the real control socket.
#
#   Tests/Tools/api-fuzz.sh SOCKET [MAX_EXAMPLES]
#
# schemathesis speaks HTTP over TCP only, so socat bridges a loopback port to the Unix socket.
# The API knows callers by the uid that connected, which is socat's: API_FUZZ_AS=UID:GID runs
# socat under that uid (default: the caller's own, e.g. root, a host-admin in the demo). Run it
# against a test host: as a host-admin it starts and stops partitions whose ids it guesses.
# Checks: not_a_server_error, response_schema_conformance, status_code_conformance against
# configs/openapi.yaml, in positive and negative modes. Exit status non-zero on any finding.
#
# Against the fixture's server instead of a daemon:
#   BULKHEAD_API_SERVE=/tmp/api.sock .build/debug/BulkheadPackageTests.xctest ManagementTests.ServeFixtureTests &
#   Tests/Tools/api-fuzz.sh /tmp/api.sock; touch /tmp/api.sock.stop
set -euo pipefail
cd "$(dirname "$0")/../.."

socket="${1:?usage: Tests/Tools/api-fuzz.sh SOCKET [MAX_EXAMPLES]}"
examples="${2:-50}"
[[ "$examples" =~ ^[0-9]+$ ]] || { echo "MAX_EXAMPLES must be a whole number" >&2; exit 2; }

if ! command -v schemathesis >/dev/null; then
  echo "api-fuzz: installing schemathesis from PyPI" >&2
  python3 -m pip install --quiet schemathesis
fi
if ! command -v socat >/dev/null; then
  echo "api-fuzz: installing socat" >&2
  apt-get install -y -qq socat >/dev/null
fi

deadline=$((SECONDS + 30))
until [[ -S "$socket" ]]; do
  (( SECONDS < deadline )) || { echo "api-fuzz: no socket at $socket after 30 s" >&2; exit 2; }
  sleep 0.2
done

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as=()
if [[ -n "${API_FUZZ_AS:-}" ]]; then
  as=(setpriv --reuid="${API_FUZZ_AS%%:*}" --regid="${API_FUZZ_AS##*:}" --clear-groups --)
fi
"${as[@]}" socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$socket" &
bridge=$!
trap 'kill "$bridge" 2>/dev/null || true' EXIT

deadline=$((SECONDS + 10))
until python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do
  (( SECONDS < deadline )) || { echo "api-fuzz: the socat bridge did not come up" >&2; exit 2; }
  sleep 0.1
done

echo "api-fuzz: schemathesis against $socket (bridged at 127.0.0.1:$port), $examples examples per operation" >&2
schemathesis run configs/openapi.yaml \
  --url "http://127.0.0.1:$port" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance \
  --max-examples "$examples" \
  --workers 1 \
  --generation-deterministic \
  --no-color
