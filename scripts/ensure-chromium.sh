#!/usr/bin/env bash
# The report tests render HTML pages with headless Chromium: install Debian's package when it is
# missing (as root, with apt-get); elsewhere say what to install.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
    command -v "$name" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (for the report tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "the report tests need Chromium: install it (Debian/Ubuntu: apt-get install chromium)" >&2
exit 1
