#!/usr/bin/env bash
# Install the headless browser the dashboard test drives (Debian's chromium + chromium-driver), when missing.
# Idempotent and quiet: a no-op when /usr/bin/chromium and /usr/bin/chromedriver are there. Without apt-get or
# root it only says so: the browser test then skips (or fails under CI=true).
set -u

have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

have && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get; install chromium and chromedriver yourself for the dashboard test" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-browser: not root; run: sudo apt-get install chromium chromium-driver" >&2
        exit 0
    fi
else
    SUDO=""
fi
echo "install-browser: installing chromium and chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null 2>&1
    $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
}
have || { echo "install-browser: chromium or chromedriver still missing" >&2; [ "${CI:-}" != "true" ]; exit $?; }
