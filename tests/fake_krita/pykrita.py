"""A stand-in for Krita's `pykrita` module. FAKE_KRITA_QT=5 or 6: a Krita 5.3+/6 that says which
Qt it embeds (`qt_major_version()`); unset: a Krita 5.2 or older, which cannot say (Qt 5)."""

import os

_MAJOR = os.environ.get("FAKE_KRITA_QT", "")

if _MAJOR:
    def qt_major_version() -> int:
        return int(_MAJOR)
