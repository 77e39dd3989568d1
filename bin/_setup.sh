# Shared set-up for bin/test and bin/serve; sourced, never run on its own.
#
# Provides: cd to the repo root, a Python >= 3.11, a virtual environment in .venv with a
# requirements file installed, and the pinned gemini CLI in node_modules (npm ci). Each
# install is skipped when a stamp (a hash of its inputs, kept inside what it installed)
# shows nothing changed, so a second run starts in well under a second.
#
# shellcheck shell=bash

# Work from the repo root whatever the caller's cwd: every path below is relative to it.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT" || exit 1

SCRIPT_NAME="bin/$(basename "$0")"
VENV="$REPO_ROOT/.venv"

log() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }

# How to run apt-get: directly as root, through sudo when it needs no password (no stdin in
# CI, and a prompt here would hang), or not at all. Sets SUDO; returns 1 when we cannot.
SUDO=""
can_apt() {
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    return 1
  fi
}

# Install Debian packages non-interactively (no stdin in CI). `env` carries DEBIAN_FRONTEND
# through sudo, whose env_reset would drop a plain VAR=value prefix; Dpkg::Use-Pty=0 keeps
# dpkg's progress bars out of logs.
apt_install() {
  log "installing Debian packages: $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 "$@"
}

# Fingerprint of some files' names and contents plus extra strings (e.g. tool versions),
# for the stamps. Uses the venv's Python (hashlib), so it works where sha256sum is missing
# (macOS); call it only after ensure_venv.
fingerprint() {
  "$VENV/bin/python" - "$@" <<'EOF'
import hashlib, os, sys
h = hashlib.sha256()
for arg in sys.argv[1:]:
    h.update(arg.encode() + b"\0")
    if os.path.isfile(arg):
        with open(arg, "rb") as f:
            h.update(f.read())
print(h.hexdigest())
EOF
}

# A Python >= 3.11 (the project's target; pyproject sets py311). $PYTHON may name one;
# otherwise the first of python3.11, python3, python that runs and is new enough (a pyenv
# shim can exist for a version that is not installed, so each candidate is run, not just found).
find_python() {
  local candidate
  for candidate in ${PYTHON:-} python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      PYTHON="$(command -v "$candidate")"
      return 0
    fi
  done
  die "no Python >= 3.11 found (tried: ${PYTHON:+$PYTHON }python3.11 python3 python); install Python 3.11 (Debian: apt-get install python3)"
}

# The venv is usable when its interpreter runs, is >= 3.11 and has pip. A venv whose base
# Python was removed or upgraded away, or one half-made by a failed `python -m venv`, is not.
venv_ok() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

# Create .venv if it is missing or broken. A venv is also what makes a PEP 668
# ("externally-managed-environment") system Python usable: pip installs go into .venv.
ensure_venv() {
  venv_ok && return 0
  find_python
  if [ -e "$VENV" ]; then
    log "$VENV is broken (no working Python >= 3.11 with pip); recreating it"
    rm -rf "$VENV"
  fi
  # Debian splits ensurepip (which `python -m venv` needs for pip) into python3.X-venv;
  # without it venv fails half-way. Install it when we can, else name the package.
  if ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    local pkg
    pkg="$("$PYTHON" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')"
    if can_apt; then
      apt_install "$pkg"
    elif command -v apt-get >/dev/null 2>&1; then
      die "$PYTHON cannot create a virtual environment: the Debian package $pkg is missing.
  Run:  sudo apt-get install -y $pkg
  then run $SCRIPT_NAME again."
    else
      die "$PYTHON has no ensurepip, so it cannot create a virtual environment with pip; install a full Python >= 3.11 or set PYTHON=/path/to/python3.11"
    fi
  fi
  log "creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
  if ! "$PYTHON" -m venv "$VENV"; then
    rm -rf "$VENV"
    die "'$PYTHON -m venv $VENV' failed (output above)"
  fi
  venv_ok || die "$VENV was created but has no working pip"
}

# pip install -r FILE into the venv unless the stamp says FILE (and requirements.txt, which
# the dev file includes with -r) is what was installed last. The stamp lives in .venv, so a
# recreated venv always installs.
ensure_requirements() {
  local req="$1" stamp sum
  stamp="$VENV/.installed-$req.sha256"
  sum="$(fingerprint "$req" requirements.txt)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    return 0
  fi
  log "installing Python packages from $req into .venv"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  printf '%s\n' "$sum" >"$stamp"
}

# The pinned gemini CLI (package.json / package-lock.json) in ./node_modules, which the proxy
# falls back to and the real-CLI tests use. npm ci only when node_modules is missing or the
# lock file (or node's version, for native addons) changed. npm ci wipes node_modules first,
# so a stale stamp inside it cannot survive a failed install.
ensure_node_modules() {
  local stamp="node_modules/.installed-package-lock.sha256" sum node_version
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    die "node and npm are needed for the pinned gemini CLI (npm ci); install node 20 with npm"
  fi
  node_version="$(node --version)"
  case "$node_version" in
    v1[0-9].*|v[0-9].*) die "node $node_version is too old: the gemini CLI needs node >= 20" ;;
  esac
  sum="$(fingerprint package.json package-lock.json "node=$node_version")"
  if [ -d node_modules ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    return 0
  fi
  log "installing the pinned gemini CLI (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  printf '%s\n' "$sum" >"$stamp"
}
