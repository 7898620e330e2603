#!/usr/bin/env bash
# Installs the real services the tests and the demo talk to, when missing:
#   Debian's rabbitmq-server (the protocol's message broker) and prometheus
#   (scrapes /metrics, discovers targets through the Consul-compatible API),
#   a Python venv with the independent clients pika, py-consul and grpcio
#   (with grpcio-tools to generate stubs from the .proto, and
#   grpcio-reflection), and, for the web UI's browser tests, Debian's
#   chromium with Playwright from npm (playwright-core, pinned; it downloads
#   no browser of its own: the tests drive /usr/bin/chromium).
# Installs only; it starts nothing. Each test starts its own broker or
# Prometheus on its own port and data dir and stops it by pid.
# Safe to run concurrently (one flock) and quick when all is there.
#
#   QM_VENV          where the venv goes (default: <repo>/target/qm-venv)
#   QM_NODE_MODULES  where Playwright goes (default: <repo>/target/qm-node-modules)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${QM_VENV:-$repo/target/qm-venv}"
node_modules="${QM_NODE_MODULES:-$repo/target/qm-node-modules}"
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
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-services: apt-get install ${missing[*]}" >&2
  # The package lists first: on a fresh machine they are empty or old.
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q >&2
  as_root apt-get install -y -q "${missing[@]}" >&2
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

# Playwright's library without browsers, pinned, in a project-local
# directory (never committed: target/ is ignored). The marker names the
# version, so a changed pin reinstalls.
playwright_version=1.65.2
if [ "$(cat "$node_modules/.complete" 2>/dev/null)" != "playwright-core@$playwright_version" ]; then
  echo "install-services: playwright-core@$playwright_version into $node_modules" >&2
  rm -rf "$node_modules"
  mkdir -p "$node_modules"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$node_modules" --no-audit --no-fund --no-save \
    --loglevel=error "playwright-core@$playwright_version" >&2
  echo "playwright-core@$playwright_version" >"$node_modules/.complete"
fi
