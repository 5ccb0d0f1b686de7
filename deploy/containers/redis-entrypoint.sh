#!/bin/sh
# Redis from Debian's packages on the official image's contract, as compose.yaml uses it:
# the command is redis-server's (options alone are given to redis-server), the working
# directory /data holds the append-only file, and the server runs as the user redis.
set -eu
case "${1:-}" in
  -* | *.conf) set -- redis-server "$@" ;;
esac
if [ "$(id -u)" = 0 ] && [ "${1:-}" = redis-server ]; then
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
