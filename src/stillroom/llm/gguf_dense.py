"""A saved transformers folder per GGUF file: its de-quantized model and tokenizer, made once.

Loading a GGUF into transformers converts its tokenizer and unpacks every weight, each time:
about 16 s for the embedded SmolLM2-135M on two cores, against a quarter of a second from a
``save_pretrained`` folder. :func:`dense_folder` makes that folder the first time a GGUF is
loaded and hands it out afterwards; the student loader, the transformers backend and tokenizer-
only loads read from it. The folder holds exactly what loading the GGUF gives (float32 weights,
config, generation config, tokenizer with its chat template), so the numbers do not change.

Where: ``$STILLROOM_MODEL_CACHE``, else ``<XDG_CACHE_HOME or ~/.cache>/stillroom/gguf-dense``;
``STILLROOM_MODEL_CACHE=off`` turns it off (every load converts the GGUF, as without a cache).
One folder per GGUF, named by the file's stem and a hash of its resolved path, size and
modification time and of the transformers version (a new converter may unpack differently), so
an edited or replaced file gets a new folder; the older folder of the same file is removed then.

Several processes may load the same GGUF at once (a test suite, ``run`` beside ``train``): each
builds in its own hidden sibling folder, writes the marker file last and renames the folder into
place; the loser of the race uses the winner's folder and deletes its own. A folder without the
marker (a copy cut short, a meddled one) is never used: it is rebuilt. A build that cannot write
(disk full, read-only cache) logs a warning and the caller loads the GGUF as usual.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV_VAR = "STILLROOM_MODEL_CACHE"
MARKER = "stillroom_dense.json"
"""Written last into a finished folder: what it was made from (the key)."""

# Raised when what a folder holds, or how it is made, changes: older folders are then not used.
_FORMAT = 1
# Folders being built (or abandoned by a crash) start with this; never handed out.
_PARTIAL = ".partial."

log = logging.getLogger(__name__)


def cache_root() -> Path | None:
    """The folder holding the dense copies, or None when ``STILLROOM_MODEL_CACHE=off``."""
    configured = os.environ.get(CACHE_ENV_VAR, "").strip()
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stillroom" / "gguf-dense"


def dense_folder(gguf: str | Path) -> Path | None:
    """The dense transformers folder of ``gguf``, converting the GGUF the first time.

    None when the cache is off or cannot be written (then load the GGUF itself).
    """
    root = cache_root()
    if root is None:
        return None
    key = _key(Path(gguf))
    final = root / _folder_name(key)
    if _finished(final, key):
        return final
    try:
        return _build(Path(key["gguf"]), root, final, key)
    except OSError as error:  # a cache is a shortcut: a full disk must not stop the load
        log.warning(
            "cannot write the GGUF model cache %s (%s); loading %s directly, which converts it "
            "every time (set %s to a writable folder, or to off)",
            root, error, key["gguf"], CACHE_ENV_VAR,
        )
        return None


def tokenizer_folder(gguf: str | Path) -> Path | None:
    """The dense folder of ``gguf`` when one is there already, else None; never converts.

    A caller needing only the tokenizer must not pay for unpacking the whole model.
    """
    root = cache_root()
    if root is None:
        return None
    key = _key(Path(gguf))
    final = root / _folder_name(key)
    return final if _finished(final, key) else None


# -- loading a GGUF into transformers ---------------------------------------------------------------


def load_gguf(gguf: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file: float32, every weight unpacked, on the CPU.

    What the cache saves, and what a load without the cache gives.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf.parent, gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # Parsed once and handed on: given no config, from_pretrained parses a GGUF twice.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, config=config, gguf_file=name, dtype=torch.float32, **_dense_options(name)
    )
    _forget_gguf(model)
    return model, tokenizer


def convert(gguf: Path, out: Path) -> None:
    """Save ``gguf``'s float32 model and its tokenizer into ``out`` (a transformers folder)."""
    model, tokenizer = load_gguf(gguf)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _dense_options(gguf_file: str) -> dict[str, Any]:
    """``from_pretrained`` options asking for every GGUF weight unpacked to a dense float tensor.

    transformers 5.x may keep GGUF blocks packed behind custom kernels where it finds some; a
    model to train, save or cache must be an ordinary float model. Older versions always unpack
    and lack the option.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    if "dequantize" not in inspect.signature(GgufConfig).parameters:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_file, dequantize=True)}


def _forget_gguf(model: Any) -> None:
    """Drop the GGUF "quantizer" marks from a model whose weights are all dense already.

    transformers refuses to save_pretrained a model still marked as GGUF-quantized, although
    after unpacking its weights are plain float32 tensors.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = [type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Gguf")]
    if packed:
        raise RuntimeError(
            f"transformers kept GGUF weights packed ({packed[0]}); a dense model was asked for"
        )
    quantizer.remove_quantization_config(model)


# -- the cache folder --------------------------------------------------------------------------------


def _key(gguf: Path) -> dict[str, Any]:
    import transformers

    path = gguf.expanduser().resolve()
    stat = path.stat()
    return {
        "format": _FORMAT,
        "gguf": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "transformers": transformers.__version__,
    }


def _folder_name(key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(key["gguf"]).stem)[:80]
    return f"{stem}-{digest}"


def _marker(folder: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _finished(folder: Path, key: dict[str, Any]) -> bool:
    return _marker(folder) == key


def _build(gguf: Path, root: Path, final: Path, key: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _sweep_abandoned(root)
    partial = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL}{_host()}.{os.getpid()}.", dir=root))
    try:
        convert(gguf, partial)
        _sync_files(partial)
        # Last: a folder with the marker is whole, even after a crash or a power cut.
        _write_synced(partial / MARKER, json.dumps(key, sort_keys=True))
        _move_into_place(partial, final, key)
        _drop_older_copies(root, final, key)
        return final
    finally:
        if partial.exists():  # failed, or another process's folder won the race
            shutil.rmtree(partial, ignore_errors=True)


def _move_into_place(partial: Path, final: Path, key: dict[str, Any]) -> None:
    # A rename onto a non-empty folder fails: either another process finished first (use its
    # folder), or something without our marker sits there (set it aside, try again).
    for _ in range(3):
        try:
            os.rename(partial, final)
            return
        except OSError:
            if _finished(final, key):
                return
            _discard(final)
    raise OSError(f"cannot move the converted model into {final}")


def _discard(folder: Path) -> None:
    """Remove ``folder`` safely against other processes: renamed aside first, then deleted."""
    aside = folder.parent / f"{_PARTIAL}{_host()}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process set it aside already
        return
    shutil.rmtree(aside, ignore_errors=True)


def _drop_older_copies(root: Path, final: Path, key: dict[str, Any]) -> None:
    """Remove folders made from an older state of the same GGUF (it was edited or replaced)
    by the same transformers version: ~540 MB each for the embedded model, never used again.
    Another version's folders stay: two environments may share the cache."""
    for folder in root.iterdir():
        if folder == final or folder.name.startswith(_PARTIAL) or not folder.is_dir():
            continue
        marker = _marker(folder)
        if marker and all(marker.get(k) == key[k] for k in ("format", "gguf", "transformers")):
            _discard(folder)


def _sweep_abandoned(root: Path) -> None:
    """Remove partial folders of processes on this machine that are gone (a crash, a kill)."""
    for folder in root.glob(f"{_PARTIAL}*"):
        parts = folder.name[len(_PARTIAL):].split(".")
        if len(parts) < 2 or parts[0] != _host() or not parts[1].isdigit():
            continue
        if not _alive(int(parts[1])):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _host() -> str:
    # Hashed: a host name may hold dots, and process ids only mean something on their machine.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _sync_files(folder: Path) -> None:
    """Flush every file to disk before the marker says the folder is whole."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _write_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
