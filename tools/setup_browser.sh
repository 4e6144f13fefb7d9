#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/integration/report/test_report.py, the test named
# test_report_in_headless_chromium_shows_every_rollout_and_window): Debian's `chromium` package.
# Idempotent: an existing /usr/bin/chromium is left alone (well under a second). Without root and sudo, or when
# apt-get is missing, it says so and exits 0: the browser test then skips naming this script, nothing else
# depends on a browser.
set -euo pipefail
CHROMIUM=${VT_RAY_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "[browser] no apt-get on this machine: install Chromium yourself (or set VT_RAY_CHROMIUM) to run the report's browser test" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "[browser] need root to apt-get install chromium (not root, no passwordless sudo): the report's browser test will skip" >&2
  exit 0
fi
echo "[browser] apt-get install chromium (headless browser for the report test)"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
"$CHROMIUM" --version
