#!/usr/bin/env bash
# Validates the deployment files on a machine without a container engine or a cluster
# (this project's machines and CI have neither): the files are checked, not run.
#
#   deploy/validate.sh
#
# Installs what is missing, once per machine: Debian's docker-compose (1.29, whose
# `config` validates a compose file without a Docker daemon) and prometheus (for
# promtool), then kubernetes-validate from PyPI into .stack/validate-venv. Then:
#
#   1. docker-compose config       deploy/docker-compose.yml against the Compose schema
#   2. promtool check config       deploy/prometheus/prometheus.yml (and its rule files)
#   3. promtool check rules        deploy/prometheus/alerts.yml
#   4. promtool test rules         deploy/prometheus/alerts_test.yml: alerts fire on
#                                  synthetic series, and stay silent
#   5. validate_files.py           Kubernetes manifests against the API schemas (strict),
#                                  and the files against each other and the code: binaries,
#                                  configuration sections, ports, probes, dashboard
#                                  expressions (promtool), metric names
#   6. validate_files.py --self-test  each of those checks refuses a broken copy
#
# Exits non-zero if any step fails. A second run installs nothing and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${TOCSIN_STACK_DIR:-$ROOT/.stack}"
VENV="$STATE/validate-venv"
REQUIREMENTS="$ROOT/deploy/validate-requirements.txt"

say() { printf '\033[1m[validate]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[validate]\033[0m %s\n' "$*" >&2; exit 1; }

# shellcheck source=deploy/local/apt.sh
source "$ROOT/deploy/local/apt.sh"

install() {
  local missing=()
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v python3 >/dev/null || missing+=(python3 python3-venv)
  [ ${#missing[@]} -eq 0 ] || APT_LEAN=1 apt_install "${missing[@]}"
  local want; want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  say "installing deploy/validate-requirements.txt (kubernetes-validate) into $VENV"
  mkdir -p "$STATE"
  if [ ! -x "$VENV/bin/pip" ] && ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    APT_LEAN=1 apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --disable-pip-version-check --quiet -r "$REQUIREMENTS"
  echo "$want" >"$VENV/.requirements.sha256"
}

passed=0
failed=0
step() {
  local title=$1
  shift
  say "$title"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    printf '\033[1;31m[validate]\033[0m FAILED: %s\n' "$title" >&2
  fi
}

install
PROMTOOL=$(command -v promtool) || die "promtool is missing after the install"

step "docker-compose config: deploy/docker-compose.yml ($(docker-compose version --short))" \
  docker-compose -f deploy/docker-compose.yml config -q
step "promtool check config: deploy/prometheus/prometheus.yml" \
  "$PROMTOOL" check config deploy/prometheus/prometheus.yml
step "promtool check rules: deploy/prometheus/alerts.yml" \
  "$PROMTOOL" check rules deploy/prometheus/alerts.yml
# promtool resolves rule_files relative to the test file.
step "promtool test rules: deploy/prometheus/alerts_test.yml" \
  "$PROMTOOL" test rules deploy/prometheus/alerts_test.yml
step "validate_files.py: manifests, compose, rules, dashboards against the schemas and the code" \
  "$VENV/bin/python" deploy/validate_files.py --promtool "$PROMTOOL"
step "validate_files.py --self-test: broken copies are refused" \
  "$VENV/bin/python" deploy/validate_files.py --promtool "$PROMTOOL" --self-test

echo "deploy/validate.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
