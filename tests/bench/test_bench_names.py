"""`python bench/x.py` puts bench/ first on sys.path: a module there named like one of the
project's packages hides it (bench/server.py once made `python bench/pipeline.py` die with "No
module named 'server.models'"). The same holds for eval/, run as `python -m eval`."""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_no_script_folder_module_is_named_like_a_package():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert {"server", "shared", "bench"} <= packages
    for folder in ("bench", "eval"):
        names = {f.stem for f in (ROOT / folder).glob("*.py")}
        assert names & packages == set(), folder
