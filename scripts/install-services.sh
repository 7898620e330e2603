#!/usr/bin/env bash
# Installs the real services the tests and the demo talk to, when missing:
#   Debian's rabbitmq-server (the protocol's message broker) and prometheus
#   (scrapes /metrics, discovers targets through the Consul-compatible API),
#   and a Python venv with the independent clients pika, py-consul and
#   grpcio (with grpcio-tools to generate stubs from the .proto, and
#   grpcio-reflection).
# Installs only; it starts nothing. Each test starts its own broker or
# Prometheus on its own port and data dir and stops it by pid.
# Safe to run concurrently (one flock) and quick when all is there.
#
#   QM_VENV  where the venv goes (default: <repo>/target/qm-venv)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${QM_VENV:-$repo/target/qm-venv}"
mkdir -p "$repo/target"
exec 9>"$repo/target/.install-services.lock"
flock 9

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    echo "install-services: need root to run: $*" >&2; exit 1; fi
}

missing=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v epmd >/dev/null 2>&1 || missing+=(erlang-base)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-services: apt-get install ${missing[*]}" >&2
  # policy-rc.d keeps Debian from starting the services it installs; the
  # tests start their own.
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q "${missing[@]}" >&2 ||
    { as_root apt-get update -q >&2 && as_root apt-get install -y -q "${missing[@]}" >&2; }
fi

python_packages=(pika py-consul grpcio grpcio-tools grpcio-reflection)
# The marker holds the package list, so that a venv made before a package
# was added is made again.
if [ "$(cat "$venv/.complete" 2>/dev/null)" != "${python_packages[*]}" ]; then
  echo "install-services: venv $venv with ${python_packages[*]}" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${python_packages[@]}" >&2
  echo "${python_packages[*]}" > "$venv/.complete"
fi
