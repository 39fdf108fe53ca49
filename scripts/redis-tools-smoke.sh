#!/usr/bin/env bash
# Runs Debian's redis-cli and redis-benchmark against `latchkey serve` on
# loopback and fails on any error. Installs redis-tools if it is missing.
# Usage: scripts/redis-tools-smoke.sh [path/to/latchkey]
set -euo pipefail
bin=${1:-target/debug/latchkey}
port=${SMOKE_PORT:-16379}
if ! command -v redis-cli >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-tools (redis-cli, redis-benchmark)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null && apt-get install -y -qq redis-tools >/dev/null
  else sudo apt-get update -qq >/dev/null && sudo apt-get install -y -qq redis-tools >/dev/null; fi
fi
dir=$(mktemp -d)
log="$dir/serve.log"
"$bin" --dir "$dir/data" serve --port "$port" >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
cli() { redis-cli -p "$port" "$@"; }
expect() { local want=$1; shift; local got; got=$(cli "$@"); if [ "$got" != "$want" ]; then echo "FAIL: $* -> $got (want $want)"; cat "$log"; exit 1; fi; }
expect PONG ping
expect OK set greeting hello
expect hello get greeting
expect 1 incr visits
expect 1 lock.acquire report worker-1 10000
expect OK fenced report 1 set report done
expect 1 lock.release report worker-1
expect 1 exists report
if cli fenced report 0 set report stale | grep -q STALE; then :; else echo "FAIL: stale token accepted"; exit 1; fi
redis-cli -p "$port" -3 hello 3 | grep -q latchkey
for pipeline in 1 16; do
  out=$(redis-benchmark -p "$port" -t set,get,incr -n 20000 -r 10000 -d 100 -c 20 -P "$pipeline" -q 2>&1 | tr '\r' '\n')
  for t in SET GET INCR; do
    if ! grep -q "^$t: .*requests per second" <<<"$out"; then echo "FAIL: redis-benchmark -P $pipeline $t"; echo "$out" | tail -5; exit 1; fi
  done
  if grep -qi "error" <<<"$out"; then echo "FAIL: redis-benchmark reported errors"; echo "$out" | grep -i error | head; exit 1; fi
  grep -E "^(SET|GET|INCR): .*requests per second" <<<"$out" | sed "s/^/-P $pipeline /"
done
kill -TERM "$pid"
wait "$pid"
"$bin" --dir "$dir/data" check --quiet
echo "redis-tools smoke: ok"
