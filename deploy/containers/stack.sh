#!/usr/bin/env bash
# Builds refund-sorter's images and runs compose.yaml in them with podman, on a Debian 12
# machine without systemd and, if need be, without an image registry (docs/deployment.md,
# "Without a registry").
#
#   bash deploy/containers/stack.sh images     # base images, wheelhouse, refund-sorter:base and :worker
#   bash deploy/containers/stack.sh up         # docker-compose up -d; returns once every service is up
#   bash deploy/containers/stack.sh compose ARGS...   # any docker-compose command on the stack
#   bash deploy/containers/stack.sh down [-v]  # docker-compose down (-v: the volumes too), then
#                                              # stops the podman service and health checks
#
# `images` installs what it needs that is missing (podman, runc, netavark, aardvark-dns,
# iptables, mmdebstrap, docker-compose; apt-get, as root or through sudo) and changes no configuration
# file of the host: podman reads deploy/containers/containers.conf through CONTAINERS_CONF.
# Where docker.io's python:3.11-slim, postgres:16 and redis:7 can be pulled, it uses them;
# otherwise it makes their stand-ins from Debian 12's packages with mmdebstrap (PostgreSQL
# 15, Redis 7.0; deploy/containers/compose.debian.yaml names them). The project's Python
# packages come from wheelhouse/, filled with `pip wheel` when it is empty or was made for
# other requirements, and the images are built without network.
#
# `up` starts `podman system service` on a socket of its own (docker-compose talks to it)
# and, since podman runs health checks through systemd timers, a loop that runs
# `podman healthcheck run` on the stack's containers every 5 seconds; both run until `down`.
#
# Settings from the environment: COMPOSE_PROJECT_NAME (default refund-sorter), the secrets
# compose.yaml asks for (POSTGRES_PASSWORD, REDIS_PASSWORD, FLOWER_BASIC_AUTH, REVIEWERS,
# REVIEW_SECRET_KEY), its published ports (FLOWER_PORT, METRICS_PORT, REVIEW_PORT, API_PORT),
# DEBIAN_MIRROR (default http://deb.debian.org/debian) and
# DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/deploy/containers
export CONTAINERS_CONF=$HERE/containers.conf
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-refund-sorter}
STATE=$ROOT/var/containers/$COMPOSE_PROJECT_NAME
SOCKET=$STATE/podman.sock
export DOCKER_HOST=unix://$SOCKET
WHEELHOUSE=$ROOT/wheelhouse # where the Dockerfile finds it
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# The images made from Debian's packages, and the public ones they stand in for.
DEBIAN_PYTHON=localhost/refund-sorter-python:3.11-bookworm
DEBIAN_POSTGRES=localhost/refund-sorter-postgres:15-bookworm
DEBIAN_REDIS=localhost/refund-sorter-redis:7-bookworm
PUBLIC_PYTHON=docker.io/library/python:3.11-slim
PUBLIC_POSTGRES=docker.io/library/postgres:16
PUBLIC_REDIS=docker.io/library/redis:7

say() { echo "stack: $*" >&2; }
fail() {
  say "$*"
  exit 1
}
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_tools() {
  local missing=() tool package
  for tool in podman:podman runc:runc mmdebstrap:mmdebstrap docker-compose:docker-compose \
    /usr/lib/podman/netavark:netavark /usr/lib/podman/aardvark-dns:aardvark-dns \
    iptables:iptables; do
    package=${tool#*:}
    tool=${tool%%:*}
    [ -x "$tool" ] || command -v "$tool" >/dev/null 2>&1 || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}"
  fi
}

# --------------------------------------------------------------------------- images

recipe() { # what an image made from Debian's packages is made of: its label
  cat "$@" | sha256sum | cut -c1-16
}

has_recipe() { # IMAGE RECIPE: the image exists and was made from this recipe
  [ "$(podman image inspect --format '{{index .Config.Labels "refund-sorter.recipe"}}' "$1" \
    2>/dev/null)" = "$2" ]
}

debian_image() { # IMAGE PACKAGES ENTRYPOINT [podman import --change ...]
  local image=$1 packages=$2 entrypoint=$3 label tarball start
  shift 3
  label=$(echo "$packages $DEBIAN_MIRROR $*" | recipe - ${entrypoint:+"$HERE/$entrypoint"})
  if has_recipe "$image" "$label"; then
    say "$image: made before, kept"
    return
  fi
  start=$SECONDS
  tarball=$STATE/$(basename "${image%%:*}").tar
  mkdir -p "$STATE"
  local hooks=(--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')
  if [ -n "$entrypoint" ]; then
    hooks+=(--customize-hook="copy-in $HERE/$entrypoint /usr/local/bin")
  fi
  if [[ $packages == *postgresql* ]]; then
    # The package makes a cluster of its own when installed; the entrypoint makes the one used.
    hooks+=(--essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/refund-sorter.conf"')
  fi
  mmdebstrap --quiet --variant=minbase --include="$packages" "${hooks[@]}" bookworm "$tarball" \
    "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" \
    "deb $DEBIAN_SECURITY_MIRROR bookworm-security main"
  podman import --change "LABEL refund-sorter.recipe=$label" "$@" "$tarball" "$image" >/dev/null
  rm -f "$tarball"
  say "$image: made from Debian's packages in $((SECONDS - start)) s"
}

pulled() { # IMAGE: present, or pulled now
  podman image exists "$1" || timeout 120 podman pull --quiet "$1" >/dev/null 2>&1
}

base_images() {
  if pulled "$PUBLIC_PYTHON" && pulled "$PUBLIC_POSTGRES" && pulled "$PUBLIC_REDIS"; then
    say "using the public images $PUBLIC_PYTHON, $PUBLIC_POSTGRES, $PUBLIC_REDIS"
    PYTHON_IMAGE=$PUBLIC_PYTHON
    return
  fi
  say "$PUBLIC_PYTHON, $PUBLIC_POSTGRES or $PUBLIC_REDIS could not be pulled:" \
    "making stand-ins from Debian 12's packages"
  local path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  debian_image "$DEBIAN_PYTHON" python3,python3-venv,ca-certificates,passwd "" \
    --change "ENV PATH=$path" --change 'CMD ["python3"]'
  debian_image "$DEBIAN_POSTGRES" postgresql-15 postgres-entrypoint.sh \
    --change "ENV PATH=/usr/lib/postgresql/15/bin:$path" \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]' --change 'CMD ["postgres"]' \
    --change 'EXPOSE 5432' --change 'STOPSIGNAL SIGINT'
  debian_image "$DEBIAN_REDIS" redis-server redis-entrypoint.sh \
    --change "ENV PATH=$path" --change 'WORKDIR /data' --change 'ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]' \
    --change 'CMD ["redis-server"]' --change 'EXPOSE 6379'
  PYTHON_IMAGE=$DEBIAN_PYTHON
}

host_pip_settings() { # podman run options: the host's pip settings, the local folders they name
  python3 - <<'PYTHON' | sort -u
import os, re, subprocess, sys

listed = subprocess.run(
    [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
).stdout
for line in listed.splitlines():
    setting = re.fullmatch(r"(:env:|global|wheel)\.([\w-]+)='(.*)'", line)
    if setting is None:
        continue
    key, value = setting[2], setting[3]
    print(f"--env=PIP_{key.upper().replace('-', '_')}={value}")
    for token in value.split():
        path = token.removeprefix("file://").rstrip("/")
        if token.startswith("file://"):
            path = os.path.dirname(path)  # an index's pages link to files beside it
        if path.startswith("/") and os.path.exists(path):
            print(f"--volume={path}:{path}:ro")
PYTHON
}

fill_wheelhouse() {
  # Made by pip in the Python base image itself: a requirement's markers (such as redis's
  # async-timeout for Python < 3.11.3) are those of the Python that installs it.
  local stamp start settings
  stamp=$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" <(podman image inspect \
    --format '{{.Id}}' "$PYTHON_IMAGE") | sha256sum | cut -c1-16)
  if compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
    if [ "$(cat "$WHEELHOUSE/.requirements" 2>/dev/null)" = "$stamp" ]; then
      say "wheelhouse $WHEELHOUSE: made for these requirements and this Python, kept"
      return
    fi
    if [ ! -e "$WHEELHOUSE/.requirements" ]; then
      say "wheelhouse $WHEELHOUSE: wheels given, used as they are"
      return
    fi
  fi
  start=$SECONDS
  say "wheelhouse $WHEELHOUSE: pip wheel in $PYTHON_IMAGE (the package index is needed for this step only)"
  mkdir -p "$WHEELHOUSE"
  rm -f "$WHEELHOUSE"/*.whl "$WHEELHOUSE/.requirements"
  mapfile -t settings < <(host_pip_settings)
  podman run --rm --network host "${settings[@]}" --volume "$ROOT/pyproject.toml:/src/pyproject.toml:ro" \
    --volume "$ROOT/constraints.txt:/src/constraints.txt:ro" --volume "$WHEELHOUSE:/wheelhouse" \
    "$PYTHON_IMAGE" sh -ec '
      python3 -m venv /tmp/venv
      /tmp/venv/bin/python - >/tmp/requirements.txt <<PYTHON
import tomllib
with open("/src/pyproject.toml", "rb") as f:
    project = tomllib.load(f)
extras = project["project"]["optional-dependencies"]
print(*project["build-system"]["requires"], *project["project"]["dependencies"], sep="\\n")
print(*extras["ml"], *extras["openvino"], sep="\\n")
PYTHON
      /tmp/venv/bin/pip wheel --quiet --no-cache-dir --wheel-dir /wheelhouse \
        -c /src/constraints.txt -r /tmp/requirements.txt' ||
    fail "pip wheel failed: copy a wheelhouse made elsewhere into $WHEELHOUSE (docs/deployment.md)"
  echo "$stamp" >"$WHEELHOUSE/.requirements"
  say "wheelhouse $WHEELHOUSE: $(du -sh "$WHEELHOUSE" | cut -f1) in $((SECONDS - start)) s"
}

project_images() {
  local target start network=()
  # From a wheelhouse, nothing is fetched: the build runs without network to prove it.
  compgen -G "$WHEELHOUSE/*.whl" >/dev/null && network=(--network none)
  for target in base worker; do
    start=$SECONDS
    podman build --quiet "${network[@]}" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
      --target "$target" --tag "refund-sorter:$target" "$ROOT" >/dev/null ||
      fail "refund-sorter:$target could not be built (podman build's errors above)"
    say "refund-sorter:$target built in $((SECONDS - start)) s" \
      "($(podman image inspect --format '{{.Size}}' "refund-sorter:$target" |
        awk '{printf "%.2f GB", $1 / 1e9}'))"
  done
}

images() {
  install_tools
  base_images
  fill_wheelhouse
  project_images
}

# --------------------------------------------------------------------------- the stack


alive() { # PIDFILE
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_service() {
  mkdir -p "$STATE"
  if ! alive "$STATE/podman.pid"; then
    rm -f "$SOCKET"
    podman system service --time=0 "unix://$SOCKET" >"$STATE/podman.log" 2>&1 </dev/null &
    echo $! >"$STATE/podman.pid"
    for _ in $(seq 50); do
      [ -S "$SOCKET" ] && break
      sleep 0.2
    done
    [ -S "$SOCKET" ] || fail "podman system service did not start: $STATE/podman.log"
  fi
  if ! alive "$STATE/health.pid"; then
    bash "$HERE/stack.sh" health-checks >"$STATE/health.log" 2>&1 </dev/null &
    echo $! >"$STATE/health.pid"
  fi
}

stop_service() {
  local name
  for name in health podman; do
    if alive "$STATE/$name.pid"; then
      kill "$(cat "$STATE/$name.pid")"
    fi
    rm -f "$STATE/$name.pid"
  done
  rm -f "$SOCKET"
}

health_checks() { # runs until killed: podman runs no health check by itself without systemd
  local id sleeper=
  trap 'kill $sleeper 2>/dev/null; exit 0' TERM
  while :; do
    for id in $(podman ps --quiet --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"); do
      podman healthcheck run "$id" >/dev/null 2>&1 || true
    done
    sleep 5 &
    sleeper=$!
    wait $sleeper
  done
}

compose() {
  local files=(--file "$ROOT/compose.yaml")
  if ! podman image exists "$PUBLIC_POSTGRES" || ! podman image exists "$PUBLIC_REDIS"; then
    podman image exists "$DEBIAN_POSTGRES" && podman image exists "$DEBIAN_REDIS" ||
      fail "no PostgreSQL or Redis image: run 'bash deploy/containers/stack.sh images' first"
    files+=(--file "$HERE/compose.debian.yaml")
  fi
  docker-compose --project-directory "$ROOT" "${files[@]}" "$@"
}

states() { # NAME STATUS, one line per container of the stack ("Up 2 minutes (healthy)")
  podman ps --all --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --format '{{.Names}} {{.Status}}'
}

wait_until_up() { # every service running (healthy where it has a check), migrate exited 0
  local pending name status
  for _ in $(seq 120); do
    pending=()
    while read -r name status; do
      case "$name $status" in
        *migrate*" Exited (0)"*) ;;
        *" Exited "*) fail "$name ${status%% ago*}: $(podman logs --tail 20 "$name" 2>&1)" ;;
        *" (healthy)") ;;
        *" Up "*\)) pending+=("$name: $status") ;; # starting or unhealthy
        *" Up "*) ;;
        *) pending+=("$name: $status") ;;
      esac
    done < <(states)
    if [ "${#pending[@]}" -eq 0 ]; then
      states | sed 's/^/stack: up: /' >&2
      return
    fi
    sleep 5
  done
  fail "not up after 10 minutes: ${pending[*]}"
}

up() {
  start_service
  compose up --detach --no-build
  wait_until_up
}

down() {
  local name
  # compose reads the whole file, secrets included, even to stop the stack.
  for name in POSTGRES_PASSWORD REDIS_PASSWORD FLOWER_BASIC_AUTH REVIEWERS REVIEW_SECRET_KEY; do
    export "$name=${!name:-unused}"
  done
  start_service
  local status=0
  compose down "$@" || status=$?
  stop_service
  return $status
}

case "${1:-}" in
  images) images ;;
  up) up ;;
  compose)
    shift
    start_service
    compose "$@"
    ;;
  down)
    shift
    down "$@"
    ;;
  health-checks) health_checks ;;
  *) fail "usage: bash deploy/containers/stack.sh images | up | compose ARGS... | down [-v]" ;;
esac
