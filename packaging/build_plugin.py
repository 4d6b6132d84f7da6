"""Build the Krita plugin zip, or install the plugin straight into a Krita profile.

The zip is what Krita's *Tools > Scripts > Import Python Plugin from File* expects: a `.desktop`
file and the plugin package side by side at the top level. The package carries its own copies of
the protocol (`shared/`) and of `websockets` under `vendor/`, because Krita's embedded Python
has neither.

    python packaging/build_plugin.py                 # -> dist/differential_diffusion-<version>.zip
    python packaging/build_plugin.py --install       # into ~/.local/share/krita/pykrita, enabled
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "differential_diffusion"
# The newest websockets that still runs on Python 3.9/3.10, which Krita's Windows and AppImage builds embed.
WEBSOCKETS_SPEC = "websockets==15.0.1"
WHEEL_CACHE = ROOT / "build" / "wheels"

DESKTOP = f"""[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library={PLUGIN_NAME}
X-Python-2-Compatible=false
Name=Differential Diffusion
Comment=Paint how much each part of the picture may change; a diffusion model edits it accordingly.
"""


def version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "0"


def websockets_wheel() -> Path:
    """The pure-Python websockets wheel, fetched once from the package index into build/wheels."""
    found = sorted(WHEEL_CACHE.glob("websockets-*-py3-none-any.whl"))
    if found:
        return found[-1]
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", WEBSOCKETS_SPEC, "--no-deps",
         "--only-binary", ":all:", "--platform", "any", "--python-version", "3.9",
         "-d", str(WHEEL_CACHE)],
        check=True,
    )
    found = sorted(WHEEL_CACHE.glob("websockets-*-py3-none-any.whl"))
    if not found:
        raise SystemExit(f"no pure-Python wheel for {WEBSOCKETS_SPEC} in {WHEEL_CACHE}")
    return found[-1]


def _copy_py_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.c"))


def stage(into: Path) -> Path:
    """Lay out `<name>.desktop` and the `<name>/` package (with vendor/) under `into`."""
    package = into / PLUGIN_NAME
    _copy_py_tree(ROOT / "krita_plugin", package)
    vendor = package / "vendor"
    vendor.mkdir(exist_ok=True)
    _copy_py_tree(ROOT / "shared", vendor / "shared")
    with zipfile.ZipFile(websockets_wheel()) as wheel:
        for member in wheel.namelist():
            if member.startswith("websockets/") and member.endswith((".py", ".typed")):
                wheel.extract(member, vendor)
    (into / f"{PLUGIN_NAME}.desktop").write_text(DESKTOP)
    return package


def build_zip(dist: Path) -> Path:
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"{PLUGIN_NAME}-{version()}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        stage(staged)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            # Directory entries too: Krita's importer finds the package by its `<name>/` entry.
            for path in sorted(staged.rglob("*")):
                archive.write(path, path.relative_to(staged).as_posix())
    return target


def enable_in_kritarc(kritarc: Path) -> None:
    """Set `[python] enable_<name>=true`, editing lines in place: Krita's own file is not strict INI."""
    key = f"enable_{PLUGIN_NAME}=true"
    lines = kritarc.read_text().splitlines() if kritarc.exists() else []
    out: list[str] = []
    in_python = seen_section = done = False
    for line in lines:
        if line.strip().startswith("[") and line.strip().endswith("]"):
            if in_python and not done:
                out.append(key)
                done = True
            in_python = line.strip() == "[python]"
            seen_section = seen_section or in_python
        elif in_python and line.startswith(f"enable_{PLUGIN_NAME}="):
            line, done = key, True
        out.append(line)
    if in_python and not done:
        out.append(key)
    elif not seen_section:
        out += ["", "[python]", key]
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    kritarc.write_text("\n".join(out) + "\n")


def install(pykrita: Path, kritarc: Path) -> Path:
    pykrita.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(pykrita / PLUGIN_NAME, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        stage(staged)
        shutil.copytree(staged / PLUGIN_NAME, pykrita / PLUGIN_NAME)
        shutil.copy2(staged / f"{PLUGIN_NAME}.desktop", pykrita / f"{PLUGIN_NAME}.desktop")
    enable_in_kritarc(kritarc)
    return pykrita / PLUGIN_NAME


def main(argv: list[str] | None = None) -> None:
    home = Path.home()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the zip goes")
    parser.add_argument("--install", action="store_true", help="install into a Krita profile and enable it")
    parser.add_argument("--pykrita", type=Path, default=home / ".local/share/krita/pykrita")
    parser.add_argument("--kritarc", type=Path, default=home / ".config/kritarc")
    args = parser.parse_args(argv)
    if args.install:
        where = install(args.pykrita, args.kritarc)
        print(f"installed {where} and enabled it in {args.kritarc}; restart Krita")
    else:
        print(build_zip(args.dist))


if __name__ == "__main__":
    main()
