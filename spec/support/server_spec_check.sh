#!/usr/bin/env bash
# Smoke test for spec/support/server.py: start it, wait for READY, poke the
# endpoints with curl (127.0.0.1 only), stop it.  Exit 0 on success.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVER="$HERE/server.py"
PY="${PYTHON:-python3}"

if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y curl >/dev/null || { echo "cannot install curl" >&2; exit 1; }
  else
    echo "curl is required" >&2; exit 1
  fi
fi

TMP="$(mktemp -d)"
SPID=""
cleanup() {
  if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then kill "$SPID" 2>/dev/null; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

FAILS=0
ok()   { echo "ok   - $*"; }
fail() { echo "FAIL - $*"; FAILS=$((FAILS + 1)); }
check() { # check DESCRIPTION EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then ok "$1"; else fail "$1: expected [$2] got [$3]"; fi
}

wait_file() { # wait_file PATH SECONDS
  local i=0
  while [ ! -s "$1" ]; do
    sleep 0.1; i=$((i + 1))
    [ "$i" -ge $(($2 * 10)) ] && return 1
  done
  return 0
}

wait_dead() { # wait_dead PID SECONDS
  local i=0
  while kill -0 "$1" 2>/dev/null; do
    sleep 0.1; i=$((i + 1))
    [ "$i" -ge $(($2 * 10)) ] && return 1
  done
  return 0
}

"$PY" "$SERVER" --port 0 --tls-port 0 --ready-file "$TMP/ready" --cert-out "$TMP/cert.pem" \
  >"$TMP/stdout" 2>"$TMP/stderr" &
SPID=$!
if ! wait_file "$TMP/ready" 20; then
  echo "server did not become ready" >&2; cat "$TMP/stderr" >&2; exit 1
fi
READY="$(cat "$TMP/ready")"
if ! [[ "$READY" =~ ^READY\ http=([0-9]+)\ https=([0-9]+)$ ]]; then
  echo "bad READY line: [$READY]" >&2; exit 1
fi
HP="${BASH_REMATCH[1]}"; SP="${BASH_REMATCH[2]}"
H="http://127.0.0.1:$HP"; S="https://127.0.0.1:$SP"
check "stdout READY line equals ready file" "$READY" "$(cat "$TMP/stdout")"
check "stdout has exactly one line" "1" "$(wc -l <"$TMP/stdout" | tr -d ' ')"

C=(curl -sS --noproxy '*' --max-time 10)

# -- basics ---------------------------------------------------------------
check "/get" '{"ok":true}' "$("${C[@]}" "$H/get")"
check "/status/418 code" "418" "$("${C[@]}" -o /dev/null -w '%{http_code}' "$H/status/418")"
check "/status/204 code" "204" "$("${C[@]}" -o /dev/null -w '%{http_code}' "$H/status/204")"
check "unknown path 404" "404" "$("${C[@]}" -o /dev/null -w '%{http_code}' "$H/no/such/thing")"
check "/redirect/3 -L" "3 $H/get" "$("${C[@]}" -L -o /dev/null -w '%{num_redirects} %{url_effective}' "$H/redirect/3")"
check "/redirect-loop stops at max-redirs" "47" \
  "$("${C[@]}" -L --max-redirs 5 -o /dev/null "$H/redirect-loop" 2>/dev/null; echo $?)"
check "/redirect-to Location" "file:///etc/passwd" \
  "$("${C[@]}" -o /dev/null -w '%{redirect_url}' "$H/redirect-to?url=file:///etc/passwd")"
check "/bytes/30" "abcdefghijklmnopqrstuvwxyzabcd" "$("${C[@]}" "$H/bytes/30")"
"${C[@]}" -o "$TMP/b" "$H/bytes/100000"
"${C[@]}" -D "$TMP/sh" -o "$TMP/sb" "$H/stream-bytes/100000?chunk=777"
check "/bytes/100000 size" "100000" "$(wc -c <"$TMP/b" | tr -d ' ')"
check "/stream-bytes same content" "$(sha256sum <"$TMP/b")" "$(sha256sum <"$TMP/sb")"
check "/stream-bytes is chunked" "1" "$(grep -ci '^transfer-encoding: chunked' "$TMP/sh")"
check "HEAD /bytes/10 Content-Length" "1" \
  "$("${C[@]}" -I "$H/bytes/10" | grep -ci '^content-length: 10'$'\r')"

# -- /echo ----------------------------------------------------------------
ECHO="$("${C[@]}" -X PUT -H 'X-Test: yes' --data-binary 'hello body' "$H/echo?a=1&b=two")"
check "/echo PUT" "PUT|/echo|1|two|yes|hello body|False" "$(printf '%s' "$ECHO" | "$PY" -c '
import json,sys; d=json.load(sys.stdin)
print("|".join(map(str,[d["method"],d["path"],d["query"]["a"],d["query"]["b"],d["headers"]["x-test"],d["body"],d["chunked"]])))')"
ECHO="$(printf 'chunked upload' | "${C[@]}" -H 'Transfer-Encoding: chunked' --data-binary @- "$H/echo")"
check "/echo chunked POST" "POST|chunked upload|True" "$(printf '%s' "$ECHO" | "$PY" -c '
import json,sys; d=json.load(sys.stdin); print("|".join(map(str,[d["method"],d["body"],d["chunked"]])))')"
ECHO="$("${C[@]}" -X DELETE "$H/echo")"
check "/echo DELETE" "DELETE" "$(printf '%s' "$ECHO" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["method"])')"

# -- content types / headers -----------------------------------------------
check "/json parses" "lasync" "$("${C[@]}" "$H/json" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["name"])')"
check "/bad-json content type" "application/json" "$("${C[@]}" -o /dev/null -w '%{content_type}' "$H/bad-json")"
check "/bad-json is invalid" "invalid" "$("${C[@]}" "$H/bad-json" | "$PY" -c '
import json,sys
try: json.load(sys.stdin); print("valid")
except ValueError: print("invalid")')"
"${C[@]}" -D "$TMP/hm" -o /dev/null "$H/headers-multi"
check "/headers-multi Set-Cookie x2" "2" "$(grep -ci '^set-cookie:' "$TMP/hm")"
check "/headers-multi X-Single x1" "1" "$(grep -ci '^x-single: one' "$TMP/hm")"
"${C[@]}" -D "$TMP/ra" -o /dev/null "$H/retry-after?status=429&after=7"
check "/retry-after" "1 1" "$(grep -c '^HTTP/1.1 429' "$TMP/ra") $(grep -ci '^retry-after: 7' "$TMP/ra")"
BH="$("${C[@]}" -o /dev/null -w '%{size_header}' "$H/big-headers?kb=50")"
if [ "$BH" -ge $((50 * 1024)) ] && [ "$BH" -lt $((52 * 1024)) ]; then ok "/big-headers?kb=50 ($BH bytes)"; else fail "/big-headers size $BH"; fi
check "/gzip --compressed" "2000" "$("${C[@]}" --compressed "$H/gzip?n=2000" | wc -c | tr -d ' ')"
check "/gzip raw is gzip" "1f8b" "$("${C[@]}" "$H/gzip?n=2000" | head -c2 | od -An -tx1 | tr -d ' \n')"
check "/gzip-bomb?mb=5 expands" "$((5 * 1048576))" "$("${C[@]}" --compressed "$H/gzip-bomb?mb=5" | wc -c | tr -d ' ')"
BOMB="$("${C[@]}" -o /dev/null -w '%{size_download}' "$H/gzip-bomb?mb=5")"
if [ "$BOMB" -lt 100000 ]; then ok "/gzip-bomb compressed size $BOMB"; else fail "/gzip-bomb compressed size $BOMB"; fi

# -- timing ---------------------------------------------------------------
T="$("${C[@]}" -o "$TMP/d" -w '%{time_total}' "$H/delay?s=0.5")"
check "/delay body" "ok" "$(cat "$TMP/d")"
"$PY" -c "import sys; sys.exit(0 if $T >= 0.5 else 1)" && ok "/delay took ${T}s" || fail "/delay too fast ($T)"
check "/slow-headers timeout -> 28" "28" "$("${C[@]}" --max-time 0.5 -o /dev/null "$H/slow-headers?s=3" 2>/dev/null; echo $?)"
T="$("${C[@]}" -o "$TMP/d" -w '%{time_total}' "$H/drip?n=5&delay=0.1")"
check "/drip body" "abcde" "$(cat "$TMP/d")"
"$PY" -c "import sys; sys.exit(0 if $T >= 0.45 else 1)" && ok "/drip took ${T}s" || fail "/drip too fast ($T)"
check "/endless -> timeout 28" "28" "$("${C[@]}" --max-time 1 -o /dev/null "$H/endless" 2>/dev/null; echo $?)"

# -- faults ---------------------------------------------------------------
check "/cut -> 18 partial" "18" "$("${C[@]}" -o /dev/null "$H/cut?n=1000&send=100" 2>/dev/null; echo $?)"
check "/cut sent 100" "100" "$("${C[@]}" "$H/cut?n=1000&send=100" 2>/dev/null | wc -c | tr -d ' ')"
RC="$("${C[@]}" -o /dev/null "$H/garbage" 2>/dev/null; echo $?)"
case "$RC" in 1|8) ok "/garbage -> curl error $RC";; *) fail "/garbage -> $RC";; esac
check "/garbage --http0.9 raw" "HELLO WORLD garbage" "$("${C[@]}" --http0.9 "$H/garbage" 2>/dev/null | head -n1 | tr -d '\r')"
check "/nothing -> 52 empty reply" "52" "$("${C[@]}" -o /dev/null "$H/nothing" 2>/dev/null; echo $?)"
check "/reset -> 56 recv failure" "56" "$("${C[@]}" -o /dev/null "$H/reset" 2>/dev/null; echo $?)"
check "/reset error text" "1" "$("${C[@]}" -o /dev/null "$H/reset" 2>&1 | grep -ci 'reset by peer')"

# -- keep-alive accounting --------------------------------------------------
count() { "${C[@]}" "$H/count" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d["requests"], d["connections"])'; }
read -r R0 C0 <<<"$(count)"
"${C[@]}" -o /dev/null -o /dev/null -o /dev/null "$H/get" "$H/get" "$H/get"
read -r R1 C1 <<<"$(count)"
check "/count: 3 keep-alive requests on 1 connection (+ /count)" "4 2" "$((R1 - R0)) $((C1 - C0))"

# -- https ----------------------------------------------------------------
check "https /get with --cacert" '{"ok":true}' "$("${C[@]}" --cacert "$TMP/cert.pem" "$S/get")"
check "https via localhost name" '{"ok":true}' "$("${C[@]}" --cacert "$TMP/cert.pem" "https://localhost:$SP/get")"
check "https without ca -> 60" "60" "$("${C[@]}" -o /dev/null "$S/get" 2>/dev/null; echo $?)"
"${C[@]}" -o "$TMP/served.pem" "$H/cert.pem"
check "/cert.pem equals --cert-out" "$(sha256sum <"$TMP/cert.pem")" "$(sha256sum <"$TMP/served.pem")"
check "https /echo tls=true" "True" "$("${C[@]}" --cacert "$TMP/cert.pem" -d x "$S/echo" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tls"])')"
check "https /stream-bytes" "$(sha256sum <"$TMP/b")" "$("${C[@]}" --cacert "$TMP/cert.pem" "$S/stream-bytes/100000" | sha256sum)"
check "https /reset -> 56" "56" "$("${C[@]}" --cacert "$TMP/cert.pem" -o /dev/null "$S/reset" 2>/dev/null; echo $?)"
check "https /gzip-bomb" "$((3 * 1048576))" "$("${C[@]}" --cacert "$TMP/cert.pem" --compressed "$S/gzip-bomb?mb=3" | wc -c | tr -d ' ')"
check "still alive after faults" '{"ok":true}' "$("${C[@]}" "$H/get")"

# -- only 127.0.0.1 ---------------------------------------------------------
if command -v ss >/dev/null 2>&1; then
  LISTEN="$(ss -ltnpH 2>/dev/null | grep "pid=$SPID," | awk '{print $4}' | sort | tr '\n' ' ')"
  check "listens on 127.0.0.1 only" "$(printf '127.0.0.1:%s\n' "$HP" "$SP" | sort | tr '\n' ' ')" "$LISTEN"
fi

# -- shutdown: SIGTERM ------------------------------------------------------
kill -TERM "$SPID"
if wait_dead "$SPID" 5; then
  wait "$SPID"; RC=$?
  check "SIGTERM exit status" "0" "$RC"
else
  fail "server still running 5s after SIGTERM"
fi
[ -s "$TMP/stderr" ] && { fail "server wrote to stderr:"; sed 's/^/    /' "$TMP/stderr"; }
SPID=""

# -- shutdown: SIGINT -------------------------------------------------------
rm -f "$TMP/ready"
"$PY" "$SERVER" --ready-file "$TMP/ready" >/dev/null 2>&1 &
SPID=$!
wait_file "$TMP/ready" 20 || fail "second server not ready"
kill -INT "$SPID"
if wait_dead "$SPID" 5; then wait "$SPID"; check "SIGINT exit status" "0" "$?"; else fail "still running after SIGINT"; fi
SPID=""

# -- shutdown: parent dies --------------------------------------------------
rm -f "$TMP/ready" "$TMP/pid"
bash -c '"$0" "$1" --ready-file "$2" >/dev/null 2>&1 & echo $! >"$3"; while [ ! -s "$2" ]; do sleep 0.1; done' \
  "$PY" "$SERVER" "$TMP/ready" "$TMP/pid"
ORPHAN="$(cat "$TMP/pid")"
if wait_dead "$ORPHAN" 5; then ok "exits when its parent dies"; else fail "orphan server still running"; kill "$ORPHAN"; fi

# -- shutdown: stdout pipe reader goes away ---------------------------------
START=$(date +%s)
LINE="$(timeout 15 bash -c '"$0" "$1" | head -n1' "$PY" "$SERVER")"
RC=$?
if [ "$RC" = 0 ] && [[ "$LINE" =~ ^READY\ http=[0-9]+\ https=[0-9]+$ ]]; then
  ok "exits when its stdout pipe closes ($(( $(date +%s) - START ))s)"
else
  fail "stdout-pipe exit: rc=$RC line=[$LINE]"
fi

echo
if [ "$FAILS" -eq 0 ]; then echo "all server checks passed"; exit 0; fi
echo "$FAILS check(s) failed"; exit 1
