"""The Krita side of harness.run_in_krita: read the arguments, run, write the JSON result.

Runs inside Krita's embedded Python (standard library and Krita only).
"""

from __future__ import annotations

import functools
import json
import os
import traceback

ARGS_ENV = "DIFFDIFF_KRITA_ARGS"
RESULT_ENV = "DIFFDIFF_KRITA_RESULT"


def entry(fn):
    """Decorate a script function `fn(args: dict) -> JSON value` for kritarunner."""

    @functools.wraps(fn)
    def run(*_ignored):  # kritarunner passes its own (empty) argument list
        try:
            with open(os.environ[ARGS_ENV]) as f:
                args = json.load(f)
            result = {"ok": True, "value": fn(args)}
        except BaseException:
            result = {"ok": False, "error": traceback.format_exc()}
        with open(os.environ[RESULT_ENV], "w") as f:
            json.dump(result, f)

    return run


def new_document(width: int, height: int, name: str = "test", model: str = "RGBA", depth: str = "U8"):
    from krita import Krita

    return Krita.instance().createDocument(width, height, name, model, depth, "", 72.0)


def layer_pixels(document) -> dict:
    """Every layer's name, type and raw pixels (hex digest), to prove nothing was touched."""
    import hashlib

    out = {}

    def walk(node, prefix):
        for index, child in enumerate(node.childNodes()):
            key = f"{prefix}{index}:{child.name()}"
            data = bytes(child.pixelData(0, 0, document.width(), document.height()))
            out[key] = {
                "id": child.uniqueId().toString(),
                "type": child.type(),
                "visible": child.visible(),
                "opacity": child.opacity(),
                "sha": hashlib.sha256(data).hexdigest(),
            }
            walk(child, key + "/")

    walk(document.rootNode(), "")
    return out
