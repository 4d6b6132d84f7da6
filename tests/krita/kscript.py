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


def read_input(args: dict, name: str) -> bytes:
    """A file the test wrote into `args["in_dir"]`."""
    with open(os.path.join(args["in_dir"], name), "rb") as f:
        return f.read()


def write_output(args: dict, name: str, data: bytes) -> None:
    """A file for the test to read back from `args["out_dir"]`."""
    with open(os.path.join(args["out_dir"], name), "wb") as f:
        f.write(bytes(data))


def picture_document(args: dict, name: str = "test"):
    """A `args["width"]` x `args["height"]` document whose Background holds the test's picture.bgra."""
    w, h = args["width"], args["height"]
    doc = new_document(w, h, name=name)
    doc.rootNode().childNodes()[0].setPixelData(read_input(args, "picture.bgra"), 0, 0, w, h)
    return doc


def add_paint_layer(document, name: str, pixels: bytes | None = None):
    """A new paint layer on top of the stack, filled with raw BGRA `pixels` of the document's size."""
    node = document.createNode(name, "paintlayer")
    document.rootNode().addChildNode(node, None)
    if pixels is not None:
        node.setPixelData(pixels, 0, 0, document.width(), document.height())
    return node
