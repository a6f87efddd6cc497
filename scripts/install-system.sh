#!/usr/bin/env bash
# System packages for the book and its tests (Debian/Ubuntu, apt-get):
#   chromium     the browser that tests/test_site.py drives (Debian's package, no download)
#   nodejs, npm  used once by the book build to fetch MathJax and the ipywidgets embed
#                manager (_ext/package.json), so that pages render offline
# Packages already present are not reinstalled. Uses sudo only when not run as root (CI runs
# as root, without sudo), and never prompts.
set -euo pipefail

packages=()
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  packages+=(chromium)
fi
if ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi
if [ "${#packages[@]}" -eq 0 ]; then
  echo "install-system: chromium and npm are already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system: please install ${packages[*]} with your system's package manager" >&2
  echo "  (and set CHROMIUM_PATH if the browser is not /usr/bin/chromium)" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "install-system: apt-get install ${packages[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" </dev/null
