"""Differential Diffusion for Krita: paint how much each part of the picture may change.

Packaged as `differential_diffusion` with `websockets` and the protocol (`shared`) under
`vendor/`; in the repository, PYTHONPATH=<repo root> makes `shared` importable instead.
Only relative imports inside the package, so it works under either name.
"""

import os
import sys

_VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")
if os.path.isdir(_VENDOR) and _VENDOR not in sys.path:
    # First, so our tested protocol and websockets win over anything else on Krita's path.
    sys.path.insert(0, _VENDOR)

try:
    # A name from Krita's module, not just `import krita`: a folder called krita on sys.path (such
    # as tests/krita) would import as an empty namespace package.
    from krita import Krita as _Krita
except ImportError:
    _Krita = None

if _Krita is not None and not os.environ.get("DIFFDIFF_NO_REGISTER"):
    from .docker import DiffDiffPanel
    from .krita_host import register_docker

    register_docker(DiffDiffPanel)
