#!/usr/bin/env bash
# Chromium and chromedriver for tests/test_browser.py (Debian/Ubuntu packages). Never fails the caller: where they
# cannot be installed (no apt, not root, no network) it says why and the browser test skips with that reason.
set -u
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "browser test: $(chromium --version 2>/dev/null | head -1), chromedriver present"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "browser test: no apt-get here; install Chromium and chromedriver to run it"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/tmp/sloguard-apt.log 2>&1 \
   || { $SUDO apt-get update -q >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/tmp/sloguard-apt.log 2>&1; }; then
    echo "browser test: installed $(chromium --version 2>/dev/null | head -1)"
else
    echo "browser test: could not install chromium/chromium-driver (see /tmp/sloguard-apt.log); it will be skipped"
fi
exit 0
