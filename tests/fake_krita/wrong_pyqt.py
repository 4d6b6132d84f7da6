"""Krita 5.3 and 6 refuse the other binding: importing it raises (Krita's own message), since
loading a second Qt would crash Krita. Krita does it on builtins.__import__, so only imports that
go through it (import statements, __import__) are refused; importlib.import_module is not."""

from __future__ import annotations

import builtins

_real_import = builtins.__import__


def refuse(binding: str) -> None:
    """From now on, importing `binding` (e.g. "PyQt5") or any of its modules raises."""
    wrong = binding.casefold()

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        folded = name.casefold()
        if level == 0 and (folded == wrong or folded.startswith(wrong + ".")):
            raise ModuleNotFoundError(f"This version of Krita is not compatible with {binding}!", name=name)
        return _real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded_import
