#!/usr/bin/env bash
# Debian packages the test suite starts its own instances of, on free loopback ports.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v openssl >/dev/null || need+=(openssl)
# S2S interop peer (tests/helpers/prosody.py); lua-unbound makes it resolve through the test's DNS server
command -v prosody >/dev/null || need+=(prosody)
dpkg -s lua-unbound >/dev/null 2>&1 || need+=(lua-unbound)
# second S2S interop peer (tests/helpers/ejabberd.py)
[ -x /usr/sbin/ejabberdctl ] || need+=(ejabberd)
# Load tool of benchmarks/compare.py (tests/integration/test_benchmark_compare_smoke.py runs it)
command -v tsung >/dev/null || need+=(tsung)
# Headless browser for the dashboard and web client tests (tests/helpers/browser.py drives it over DevTools)
command -v chromium >/dev/null || need+=(chromium)
# `docker-compose config` validates compose/docker-compose.yml in tests/integration/test_compose.py (no daemon)
command -v docker-compose >/dev/null || need+=(docker-compose)
# `kubectl kustomize` renders compose/k8s in tests/integration/test_k8s.py (no cluster needed)
command -v kubectl >/dev/null || need+=(kubernetes-client)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then echo "missing packages: ${need[*]} (apt-get install them as root)" >&2; exit 1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# JavaScript XMPP client (xmpp.js, pinned in tests/js/package-lock.json) of the Stream Management tests
# (tests/helpers/xmppjs.py); xmpp.js 0.14 wants Node.js >= 20.10
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" != 0 ]; then echo "missing packages: nodejs npm (apt-get install them as root)" >&2; exit 1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
[ -d tests/js/node_modules ] || npm ci --no-audit --no-fund --prefix tests/js
# The demo's web client (Converse.js, pinned in web/package-lock.json) that the nodes serve at /web/
# and tests/integration/test_web_client.py drives in Chromium
[ -f web/node_modules/converse.js/dist/converse.min.js ] || npm ci --no-audit --no-fund --ignore-scripts --prefix web
