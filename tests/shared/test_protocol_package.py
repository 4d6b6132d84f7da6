"""The protocol package as a whole: pure standard library, Python 3.9 syntax (Krita embeds old
Pythons), an ``__init__`` that only re-exports, and every name callers used before the split."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

from shared import protocol as p

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_FILES = sorted((ROOT / "shared").rglob("*.py"))


@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda f: str(f.relative_to(ROOT)))
def test_shared_imports_only_the_standard_library_and_parses_as_python_3_9(path):
    # Krita's embedded Python has no numpy/PIL; the plugin packages shared/ as is.
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # no match, no parenthesised with-items
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add((node.module or "").split(".")[0])
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)
    assert not modules & {"socket", "asyncio", "websockets", "threading"}
    # `X | None` outside annotations fails on 3.9; with this import, annotations are never run.
    if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body):
        assert "from __future__ import annotations" in source


def test_init_only_re_exports():
    tree = ast.parse((ROOT / "shared" / "protocol" / "__init__.py").read_text())
    kinds = {type(n).__name__ for n in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds  # docstring, imports, __all__
    assert sorted(p.__all__) == sorted(set(p.__all__))
    assert all(hasattr(p, name) for name in p.__all__)


# Every name the plugin, the server, the tests and the tools reached through `protocol.` before
# the module became a package.
NAMES_IN_USE = """
    Accepted Cancelled Capabilities ClientSession CompleteSubmit Done Error Event FanSpec Frame
    ModelInfo ModelLoaded Models OptionSpec Preview Progress ProtocolError QueuePosition Region
    Result SoftInpaint Started SubmitCollector SubmitRequest Welcome CLIENT_MESSAGE_TYPES
    CLOSE_GOING_AWAY CLOSE_MESSAGE_TOO_BIG CLOSE_POLICY_VIOLATION DEFAULT_MAX_MESSAGE_BYTES
    DEFAULT_MAX_PIXELS E_BAD_FRAME E_BAD_JSON E_BAD_MESSAGE E_BAD_OPTION E_BAD_VERSION
    E_HANDSHAKE_REQUIRED E_JOB_FAILED E_MAP_SIZE_MISMATCH E_MODEL_LOAD_FAILED E_OUT_OF_MEMORY
    E_QUEUE_FULL E_SHUTTING_DOWN E_TOO_LARGE E_UNAUTHORIZED E_UNKNOWN_JOB E_UNKNOWN_MODEL
    E_UNKNOWN_SCHEDULER E_UNKNOWN_TYPE FRAME_HEADER FRAME_IMAGE_PNG FRAME_MAP_GRAY8
    FRAME_PREVIEW_PNG FRAME_RESULT_PNG MAX_GUIDANCE MAX_OPTIONS MAX_PROMPT_CHARS MAX_REF MAX_STEPS
    MAX_TEXT_BYTES MAX_VARIANTS PROTOCOL_VERSION accepted cancelled check_hello check_options
    decode_frame describe_close done dumps encode_frame error error_from hello list_models loads
    model_loaded models parse_submit png_size preview progress queue_position read_int read_str
    result started submit_frames welcome cancel load_model
""".split()


def test_every_name_callers_used_is_still_there():
    assert [name for name in NAMES_IN_USE if not hasattr(p, name)] == []
