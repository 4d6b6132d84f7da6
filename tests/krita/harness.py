"""Run Python functions inside the real Krita (kritarunner, offscreen) and get their results back.

kritarunner imports a module from PYTHONPATH and calls one function in it; it always exits 0 and
prints a lot, so the function reports through a JSON file instead (see kscript.entry):

    from harness import run_in_krita
    value = run_in_krita("plugin_checks", "job_from_map_layer", {"out_dir": str(tmp)}, home=home)

Pure standard library so any test (or a packaging script) can load it by path. A fresh profile
(HOME) costs ~15-25 s the first time Krita starts in it (it builds its resource database), then
~1-2 s a run; so the first profile this process builds is kept as a template and copied into every
other fresh HOME passed here (~0.2 s instead), and batching checks into one run saves the rest.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARGS_ENV = "DIFFDIFF_KRITA_ARGS"
RESULT_ENV = "DIFFDIFF_KRITA_RESULT"


class KritaError(RuntimeError):
    """The function failed inside Krita (its traceback is the message) or never reported."""


PROFILE_DATA = Path(".local/share/kritarunner")  # kritarunner's resources and their database
PROFILE_RC = Path(".config/kritarunnerrc")


def _template() -> Path:
    """Where this test process keeps its warm kritarunner profile (one per process: no sharing
    between concurrent test runs, removed at exit)."""
    return Path(tempfile.gettempdir()) / f"diffdiff-krita-profile-{os.getpid()}"


def _warm(home: Path) -> None:
    """Give a fresh HOME the resource database another run of this process already built."""
    template = _template()
    if (home / PROFILE_DATA).exists() or not (template / PROFILE_DATA / "resourcecache.sqlite").exists():
        return
    shutil.copytree(template / PROFILE_DATA, home / PROFILE_DATA)
    if (template / PROFILE_RC).exists() and not (home / PROFILE_RC).exists():
        (home / PROFILE_RC).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(template / PROFILE_RC, home / PROFILE_RC)


def _keep_as_template(home: Path) -> None:
    template = _template()
    if (template / PROFILE_DATA).exists() or not (home / PROFILE_DATA / "resourcecache.sqlite").exists():
        return
    try:
        shutil.copytree(home / PROFILE_DATA, template / PROFILE_DATA)
        if (home / PROFILE_RC).exists():
            (template / PROFILE_RC).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(home / PROFILE_RC, template / PROFILE_RC)
    except OSError:  # a template is an optimisation only
        shutil.rmtree(template, ignore_errors=True)
        return
    atexit.register(shutil.rmtree, template, True)


def kritarunner() -> str | None:
    return shutil.which("kritarunner")


def krita_available() -> bool:
    return kritarunner() is not None


def websockets_dir(into: Path) -> Path:
    """A folder holding only the test environment's `websockets` (Krita's Python has none),
    so it can go on Krita's PYTHONPATH without the rest of site-packages."""
    import websockets

    into.mkdir(parents=True, exist_ok=True)
    link = into / "websockets"
    if not link.exists():
        link.symlink_to(Path(websockets.__file__).resolve().parent)
    return into


def krita_env(home: Path, pythonpath: list[Path | str], register_plugin: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    home.mkdir(parents=True, exist_ok=True)
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_RUNTIME_DIR=str(runtime),
        QT_QPA_PLATFORM=env.get("QT_QPA_PLATFORM", "offscreen"),
        PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath),
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("PYTHONHOME", None)  # the test venv's Python must not leak into Krita's embedded one
    env.pop("VIRTUAL_ENV", None)
    if not register_plugin:
        env["DIFFDIFF_NO_REGISTER"] = "1"  # importing krita_plugin must not add a docker in scripts
    return env


def run_in_krita(
    module: str,
    function: str,
    args: dict | None = None,
    *,
    home: Path,
    pythonpath: list[Path | str] | None = None,
    timeout_s: float = 180,
    register_plugin: bool = False,
) -> object:
    """Call `module.function(args)` inside Krita and return what it returned (JSON values).

    `pythonpath` defaults to this folder (the scripts) and the repository root (krita_plugin,
    shared); kscript.entry must wrap the function.
    """
    exe = kritarunner()
    if exe is None:
        raise KritaError("kritarunner is not installed")
    paths = pythonpath if pythonpath is not None else [HERE, REPO]
    with tempfile.TemporaryDirectory(prefix="krita-run-") as tmp:
        args_file, result_file = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_file.write_text(json.dumps(args or {}))
        env = krita_env(home, paths, register_plugin)
        _warm(home)
        env[ARGS_ENV], env[RESULT_ENV] = str(args_file), str(result_file)
        try:
            proc = subprocess.run([exe, "-s", module, "-f", function], env=env, capture_output=True, text=True,
                                  timeout=timeout_s, cwd=tmp)
            log = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            log = f"timed out after {timeout_s} s\n{exc.stdout or ''}{exc.stderr or ''}"
        _keep_as_template(home)
        if not result_file.exists():
            tail = "\n".join(str(log).splitlines()[-40:])
            raise KritaError(f"{module}.{function} reported nothing; Krita's output ends with:\n{tail}")
        result = json.loads(result_file.read_text())
    if not result.get("ok"):
        raise KritaError(f"{module}.{function} failed inside Krita:\n{result.get('error')}")
    return result.get("value")
