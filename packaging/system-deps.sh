#!/usr/bin/env bash
# Installs Krita, Xvfb and imagemagick through apt when they are missing and we may (root, or ALLOW_APT=1 with sudo).
set -euo pipefail
need=()
command -v kritarunner >/dev/null 2>&1 || need+=(krita)
python3 -c 'import PyQt5' >/dev/null 2>&1 || need+=(python3-pyqt5)
command -v xvfb-run >/dev/null 2>&1 || need+=(xvfb)
command -v import >/dev/null 2>&1 || need+=(imagemagick)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; elif [ "${ALLOW_APT:-0}" = 1 ]; then sudo="sudo"; else
  echo "missing ${need[*]}: install them with apt (or rerun as root / ALLOW_APT=1); the in-Krita tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${need[@]}" xauth
