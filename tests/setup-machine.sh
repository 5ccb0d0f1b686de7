#!/usr/bin/env bash
# What the tests need on a Debian machine, the first step of the README's test command:
# installs Debian's docker-compose, chromium and prometheus when they are missing, and starts
# the local PostgreSQL and Redis (127.0.0.1:5432 and :6379) when they are down. It changes
# nothing that is already there, so a second run takes well under a second.
# Usage: bash tests/setup-machine.sh (as root, or with sudo at hand for the installs).
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# tests/test_compose.py checks compose.yaml with a real compose implementation: Debian's
# docker-compose (1.29), whose `config` needs no Docker engine (hence no recommends).
# tests/review/test_browser.py drives Debian's headless Chromium over the DevTools protocol.
# tests/deploy/test_prometheus.py runs Debian's promtool on deploy/prometheus/ and a
# prometheus of its own (its package brings both; no recommends: no node exporter).
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup-machine: installing ${missing[*]}"
  as_root apt-get update -q
  for package in "${missing[@]}"; do
    recommends=()
    case "$package" in docker-compose | prometheus) recommends=(--no-install-recommends) ;; esac
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${recommends[@]}" "$package"
  done
fi
# The package starts and enables a system Prometheus on :9090 where systemd runs. The tests
# start their own on free ports, so that one would only scrape and write for nothing.
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
  as_root systemctl disable prometheus >/dev/null 2>&1 || true
  if systemctl is-active --quiet prometheus 2>/dev/null; then as_root systemctl stop prometheus; fi
fi

postgres_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

for program in pg_isready pg_ctlcluster redis-cli redis-server; do
  if ! command -v "$program" >/dev/null 2>&1; then
    echo "setup-machine: $program not found: the tests need PostgreSQL and Redis" \
      "(apt-get install postgresql redis-server)" >&2
    exit 1
  fi
done
if ! postgres_up; then
  echo "setup-machine: starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
if ! redis_up; then
  echo "setup-machine: starting Redis"
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/tests.log
fi
for _ in $(seq 30); do
  postgres_up && redis_up && exit 0
  sleep 1
done
echo "setup-machine: PostgreSQL or Redis did not answer within 30 s" >&2
exit 1
