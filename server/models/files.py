"""What a model's files may be, checked before anything is read: safetensors weights only, and
the pipeline class a diffusers folder declares. Every loader uses these; none reads pickles.

Pickled weights (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) can run code when loaded, so a folder
whose component holds nothing else is refused with a message that says how to convert it.
"""

from __future__ import annotations

import json
from pathlib import Path

PICKLED_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


class ModelNotFoundError(ValueError):
    """A model id that is neither built in, nor a local folder/file, nor loadable from the hub."""


def check_safetensors_folder(path: Path) -> None:
    """Refuse a diffusers folder any of whose components has pickled weights only.

    Per component: such a folder would make diffusers fall back to ``torch.load`` (or fail deep
    inside); refusing it here happens before anything is read."""
    pickled = [p for p in path.rglob("*") if p.suffix in PICKLED_SUFFIXES]
    unsafe = sorted({p.parent for p in pickled if not any(q.suffix == ".safetensors"
                                                          for q in p.parent.iterdir())})
    if unsafe:
        where = ", ".join(str(d.relative_to(path)) if d != path else "." for d in unsafe)
        example = next(p for p in pickled if p.parent == unsafe[0]).name
        raise ModelNotFoundError(
            f"Refusing {path}: only pickled weights ({example}) in {where}; this server loads "
            ".safetensors only (pickles can run code). Re-save the model with "
            "save_pretrained(..., safe_serialization=True).")


def model_index_class(path: Path) -> str:
    """The ``_class_name`` a diffusers folder's ``model_index.json`` gives; "" when the folder has
    none or it cannot be read (the loader then says why)."""
    index = path / "model_index.json"
    if not index.is_file():
        return ""
    try:
        return str(json.loads(index.read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return ""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 300 characters (for a painter's message)."""
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def hub_failure(exc: BaseException) -> str | None:
    """Why the hub could not give a model, in a few words a painter can act on (None: not the
    hub's doing). The outermost error that says something wins (the others are its context)."""
    from huggingface_hub import constants

    offline = "not in the local cache, and offline mode (HF_HUB_OFFLINE) is on"
    cause: BaseException | None = exc
    for _ in range(10):
        if cause is None:
            break
        names = {c.__name__ for c in type(cause).__mro__}
        if "OfflineModeIsEnabled" in names:
            return offline
        if "GatedRepoError" in names:
            return "a gated model: accept its licence on huggingface.co and log in (hf auth login)"
        if "RepositoryNotFoundError" in names:
            return "no such repository on the hub (or it is private: log in with hf auth login)"
        if "LocalEntryNotFoundError" in names or names & {"ConnectionError", "ConnectError",
                                                          "TimeoutException", "gaierror"}:
            return offline if constants.HF_HUB_OFFLINE else \
                "not in the local cache, and the hub could not be reached"
        if "EntryNotFoundError" in names:
            return "the repository has no .safetensors weights (only those are loaded)"
        cause = cause.__cause__ or cause.__context__
    return None
