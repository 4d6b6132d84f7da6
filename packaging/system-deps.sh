#!/usr/bin/env bash
# System packages the project needs, installed through apt when missing and we may (root, or
# ALLOW_APT=1 with sudo); otherwise it says what is missing and exits 0 (those tests then skip).
#   --python-only   what `make setup` needs: a Python that can make a virtual environment
#   (default)       that, plus Krita 5 with its Python (kritarunner, PyQt5), Xvfb + xauth and
#                   ImageMagick's `import`, for the in-Krita, end-to-end and GUI tests
set -euo pipefail
python=${PYTHON:-python3}
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need=()
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ "${1:-}" != "--python-only" ]; then
  command -v kritarunner >/dev/null 2>&1 || need+=(krita)
  # Krita's embedded Python is the system's: its PyQt5 comes from Debian, not from our venv.
  if command -v dpkg-query >/dev/null 2>&1; then have_pkg python3-pyqt5 || need+=(python3-pyqt5); fi
  command -v xvfb-run >/dev/null 2>&1 || need+=(xvfb)
  command -v xauth >/dev/null 2>&1 || need+=(xauth)
  command -v import >/dev/null 2>&1 || need+=(imagemagick)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${need[*]} and no apt-get here: install them with your package manager; the tests that need them skip" >&2
  exit 0
fi
if [ "$(id -u)" = 0 ]; then sudo=""; elif [ "${ALLOW_APT:-0}" = 1 ]; then sudo="sudo"; else
  echo "missing ${need[*]}: install them with apt (or rerun as root / with ALLOW_APT=1); the tests that need them skip" >&2
  exit 0
fi
echo "installing ${need[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${need[@]}"
