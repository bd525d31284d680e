#!/usr/bin/env bash
# Installed size of the image's venv, before and after the runtime lock: the Dockerfile's install
# steps into scratch venvs (no Docker needed). Usage: bash bench/image_venv_size.sh [OLD_LOCK]
# OLD_LOCK defaults to requirements.lock (the dev lock the image used to install).
set -euo pipefail
cd "$(dirname "$0")/.."
old_lock="${1:-requirements.lock}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git archive HEAD | tar -x -C "$tmp" --one-top-level=src
install() {  # venv lock uninstall...
  local venv="$1" lock="$2"; shift 2
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q --require-hashes --no-deps -r "$lock"
  (cd "$tmp/src" && "$venv/bin/pip" install -q --no-deps --no-build-isolation . \
     && "$venv/bin/pip" uninstall -q -y "$@")
}
install "$tmp/before" "$old_lock" pytest hypothesis mypy ruff
install "$tmp/after" requirements-runtime.lock setuptools wheel
for v in before after; do
  echo "$v: $(du -sm "$tmp/$v" | cut -f1) MiB, $("$tmp/$v/bin/pip" list --format=freeze | wc -l) distributions"
done
