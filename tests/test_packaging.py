"""The plugin zip as Krita's own importer sees it, and the development install into a profile."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))
import build_plugin  # noqa: E402

KRITA_IMPORTER = Path("/usr/share/krita/pykrita/plugin_importer/plugin_importer.py")
FAKE_KRITA = ROOT / "tests" / "fake_krita"


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return build_plugin.build_zip(tmp_path_factory.mktemp("dist"))


def test_zip_holds_desktop_package_and_vendored_libraries(plugin_zip: Path) -> None:
    names = set(zipfile.ZipFile(plugin_zip).namelist())
    name = build_plugin.PLUGIN_NAME
    assert f"{name}.desktop" in names
    assert f"{name}/__init__.py" in names
    assert f"{name}/vendor/websockets/asyncio/client.py" in names
    assert f"{name}/vendor/shared/__init__.py" in names
    # Pure Python only: Krita's interpreter may not match any compiled extension.
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc", ".c"))]
    desktop = zipfile.ZipFile(plugin_zip).read(f"{name}.desktop").decode()
    assert "ServiceTypes=Krita/PythonPlugin" in desktop
    assert f"X-KDE-Library={name}" in desktop


@pytest.mark.skipif(not KRITA_IMPORTER.exists(), reason="Krita is not installed")
def test_krita_importer_installs_the_zip(plugin_zip: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("krita_plugin_importer", KRITA_IMPORTER)
    importer_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(importer_module)
    imported = importer_module.PluginImporter(str(plugin_zip), str(tmp_path), lambda _: True).import_all()
    assert [p["name"] for p in imported] == [build_plugin.PLUGIN_NAME]
    package = tmp_path / "pykrita" / build_plugin.PLUGIN_NAME
    assert (package / "__init__.py").is_file()
    assert (package / "vendor" / "websockets" / "version.py").is_file()
    assert (tmp_path / "pykrita" / f"{build_plugin.PLUGIN_NAME}.desktop").is_file()


def test_vendored_libraries_import_without_site_packages(tmp_path: Path) -> None:
    package = build_plugin.stage(tmp_path)
    vendor = package / "vendor"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import websockets.asyncio.client, shared;"
        "print(websockets.__file__); print(shared.__file__)"
    )
    # -S: no site-packages, like Krita's embedded Python that has neither library.
    out = subprocess.run([sys.executable, "-S", "-c", code, str(vendor)],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert len(out) == 2 and all(line.startswith(str(vendor)) for line in out), out


@pytest.mark.parametrize(("binding", "krita_says"), [("PyQt5", None), ("PyQt5", "5"), ("PyQt6", "6")],
                         ids=["krita5.1", "krita5.3", "krita6"])
def test_the_zip_registers_and_its_docker_works_in_each_krita(plugin_zip: Path, tmp_path: Path, binding: str,
                                                              krita_says: str | None) -> None:
    """Krita 5.1 (cannot say its Qt), 5.3 (says 5) and 6 (says 6; PyQt5 refused, Krita's enums
    scoped only) played by tests/fake_krita, in a clean interpreter holding nothing but that fake,
    one binding and the unpacked zip: the plugin registers, its docker is built and clicked."""
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(tmp_path / "pykrita")
    only_binding = tmp_path / "qt"  # that binding alone, without the rest of site-packages
    only_binding.mkdir()
    (only_binding / binding).symlink_to(Path(importlib.util.find_spec(binding).origin).parent)
    env = {k: v for k, v in os.environ.items() if k != "FAKE_KRITA_QT"}
    env.update(QT_QPA_PLATFORM="offscreen", **({"FAKE_KRITA_QT": krita_says} if krita_says else {}))
    proc = subprocess.run([sys.executable, "-S", "-E", str(FAKE_KRITA / "load_plugin.py"), str(FAKE_KRITA),
                           str(only_binding), str(tmp_path / "pykrita")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["qt_api"], report["bindings_loaded"]) == (binding, [binding])
    assert report["layers"] == ["Background", "Change Map"]  # Create Change Map layer, through krita_io
    assert report["active"] == "Background"  # the painter's layer stays active
    assert (report["docker_title"], report["mode"], report["advanced_shown"]) == ("Differential Diffusion", "fan", True)
    assert report["server_url"] == "ws://127.0.0.1:9"  # the server dialog was opened and accepted unchanged
    assert report["vendored"] == ["vendor/shared/__init__.py", "vendor/websockets/__init__.py"]


def test_enable_in_kritarc_keeps_other_settings(tmp_path: Path) -> None:
    kritarc = tmp_path / "kritarc"
    kritarc.write_text("[General]\nfoo=1\n\n[python]\nenable_scripter=true\n\n[theme]\nTheme=Krita dark\n")
    build_plugin.enable_in_kritarc(kritarc)
    build_plugin.enable_in_kritarc(kritarc)  # twice: still one line
    text = kritarc.read_text()
    key = f"enable_{build_plugin.PLUGIN_NAME}=true"
    assert text.count(key) == 1
    assert "enable_scripter=true" in text and "Theme=Krita dark" in text and "foo=1" in text
    python_section = text.split("[python]")[1].split("[theme]")[0]
    assert key in python_section


def test_enable_in_kritarc_creates_section_and_flips_false(tmp_path: Path) -> None:
    kritarc = tmp_path / "kritarc"
    build_plugin.enable_in_kritarc(kritarc)
    assert kritarc.read_text().splitlines()[-2:] == ["[python]", f"enable_{build_plugin.PLUGIN_NAME}=true"]
    kritarc.write_text(f"[python]\nenable_{build_plugin.PLUGIN_NAME}=false\n")
    build_plugin.enable_in_kritarc(kritarc)
    assert kritarc.read_text() == f"[python]\nenable_{build_plugin.PLUGIN_NAME}=true\n"


def test_install_command_puts_the_plugin_into_a_profile(tmp_path: Path, capsys) -> None:
    pykrita, kritarc = tmp_path / "pykrita", tmp_path / "kritarc"
    build_plugin.main(["--install", "--pykrita", str(pykrita), "--kritarc", str(kritarc)])
    name = build_plugin.PLUGIN_NAME
    assert (pykrita / f"{name}.desktop").is_file()
    assert (pykrita / name / "__init__.py").is_file()
    assert (pykrita / name / "vendor" / "shared" / "protocol" / "__init__.py").is_file()
    assert (pykrita / name / "vendor" / "shared" / "protocol" / "client.py").is_file()
    assert f"enable_{name}=true" in kritarc.read_text()
    assert "restart Krita" in capsys.readouterr().out
    # Installing again replaces the package (no stale files from an older version survive).
    (pykrita / name / "stale.py").write_text("")
    build_plugin.main(["--install", "--pykrita", str(pykrita), "--kritarc", str(kritarc)])
    assert not (pykrita / name / "stale.py").exists()


def test_makefile_default_model_is_the_servers() -> None:
    from server.app import DEFAULT_MODEL

    makefile = (ROOT / "Makefile").read_text()
    (line,) = [line for line in makefile.splitlines() if line.startswith("MODEL ")]
    assert line.split("?=", 1)[1].strip() == DEFAULT_MODEL


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make serve", "make test"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci[-1] == "make test"
    assert (ROOT / "docs" / "docker.png").is_file()
