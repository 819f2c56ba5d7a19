"""The dense-folder cache of GGUF models (stillroom.llm.gguf_dense).

Two halves. The cache's bookkeeping (key, marker, rebuild, off, races, clean-up) runs on a small
stand-in file with a stand-in conversion, so it costs nothing. Faithfulness (the cached copy gives
the GGUF's logits and tokenizer exactly) runs on the embedded SmolLM2: converted once for the
module, into the module's own cache folder, and the model transformers loaded from the GGUF during
that conversion is kept as the reference, so the module pays one GGUF load in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stillroom.llm import gguf_dense
from stillroom.llm.gguf_dense import CACHE_ENV_VAR, MARKER, dense_folder, tokenizer_folder

ROOT = Path(__file__).resolve().parents[2]


# -- bookkeeping, on a stand-in GGUF -------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "model-cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(root))
    return root


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "tiny.Q4_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF stand-in")
    return path


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stand-in conversion writing two small files; returns the list of GGUFs converted."""
    done: list[Path] = []

    def convert(source: Path, out: Path) -> None:
        done.append(source)
        (out / "config.json").write_text(json.dumps({"from": str(source)}))
        (out / "model.safetensors").write_bytes(source.read_bytes())

    monkeypatch.setattr(gguf_dense, "convert", convert)
    return done


def entries(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


def test_converted_once_then_reused(cache: Path, gguf: Path, conversions: list[Path]) -> None:
    assert tokenizer_folder(gguf) is None  # nothing yet, and asking does not convert
    assert conversions == []
    folder = dense_folder(gguf)
    assert folder is not None and folder.parent == cache and folder.name.startswith("tiny_Q4_0-")
    assert conversions == [gguf.resolve()]
    marker = json.loads((folder / MARKER).read_text())
    assert marker["gguf"] == str(gguf.resolve()) and marker["size"] == gguf.stat().st_size
    assert dense_folder(gguf) == folder and tokenizer_folder(gguf) == folder
    assert len(conversions) == 1  # the second load found the folder
    assert entries(cache) == [folder.name]  # no partial folder left behind


def test_the_same_file_by_another_path_shares_the_folder(
    cache: Path, gguf: Path, conversions: list[Path], tmp_path: Path
) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(gguf)
    assert dense_folder(link) == dense_folder(gguf)
    assert len(conversions) == 1


def test_a_changed_file_gets_a_new_folder_and_the_old_one_goes(
    cache: Path, gguf: Path, conversions: list[Path]
) -> None:
    old = dense_folder(gguf)
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    new = dense_folder(gguf)
    assert new is not None and new != old
    assert len(conversions) == 2
    assert entries(cache) == [new.name]


def test_another_transformers_version_gets_its_own_folder_and_keeps_the_other(
    cache: Path, gguf: Path, conversions: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    first = dense_folder(gguf)
    monkeypatch.setattr(transformers, "__version__", "0.0.0-other")
    second = dense_folder(gguf)
    assert second is not None and second != first
    assert entries(cache) == sorted([first.name, second.name])  # type: ignore[union-attr]


def test_a_folder_without_its_marker_is_rebuilt(
    cache: Path, gguf: Path, conversions: list[Path]
) -> None:
    folder = dense_folder(gguf)
    assert folder is not None
    (folder / MARKER).unlink()  # as if a copy of the folder was cut short
    (folder / "stray.bin").write_bytes(b"half a weight file")
    assert tokenizer_folder(gguf) is None  # never handed out without its marker
    assert dense_folder(gguf) == folder
    assert len(conversions) == 2
    assert (folder / MARKER).is_file() and not (folder / "stray.bin").exists()
    assert entries(cache) == [folder.name]


def test_a_marker_naming_another_file_is_not_trusted(
    cache: Path, gguf: Path, conversions: list[Path]
) -> None:
    folder = dense_folder(gguf)
    assert folder is not None
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({**marker, "size": 1}))
    assert tokenizer_folder(gguf) is None
    assert dense_folder(gguf) == folder and len(conversions) == 2


def test_off_turns_the_cache_off(
    gguf: Path, conversions: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, "off")
    assert dense_folder(gguf) is None and tokenizer_folder(gguf) is None
    assert conversions == []


def test_the_default_place_is_under_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_dense.cache_root() == tmp_path / "xdg" / "stillroom" / "gguf-dense"


def test_a_cache_that_cannot_be_written_falls_back_to_the_gguf(
    gguf: Path, conversions: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV_VAR, str(blocker / "cache"))
    assert dense_folder(gguf) is None
    assert CACHE_ENV_VAR in caplog.text and str(blocker) in caplog.text


def test_a_failed_conversion_leaves_nothing_behind(
    cache: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(source: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise ValueError("unsupported architecture")

    monkeypatch.setattr(gguf_dense, "convert", broken)
    with pytest.raises(ValueError, match="unsupported architecture"):
        dense_folder(gguf)
    assert entries(cache) == []


def test_partial_folders_of_dead_processes_are_swept(
    cache: Path, gguf: Path, conversions: list[Path]
) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = cache / f".partial.{gguf_dense._host()}.{finished.stdout.strip()}.abc"
    alive = cache / f".partial.{gguf_dense._host()}.{os.getpid()}.def"
    for folder in (dead, alive):
        folder.mkdir(parents=True)
    folder = dense_folder(gguf)
    assert entries(cache) == sorted([alive.name, folder.name])  # type: ignore[union-attr]


RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from stillroom.llm import gguf_dense

    gguf, start = Path(sys.argv[1]), float(sys.argv[2])

    def slow_convert(source, out):
        (out / "model.safetensors").write_bytes(source.read_bytes())
        time.sleep(1.0)  # both processes are converting at once

    gguf_dense.convert = slow_convert
    time.sleep(max(0.0, start - time.time()))
    folder = gguf_dense.dense_folder(gguf)
    print(json.dumps({"folder": str(folder),
                      "weights": (folder / "model.safetensors").read_bytes().decode()}))
""")


def test_two_processes_racing_both_end_with_a_usable_folder(cache: Path, gguf: Path) -> None:
    import time

    start = str(time.time() + 3.0)  # both wait for the same moment, past their imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(gguf), start], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        results.append(json.loads(out))
    folders = {result["folder"] for result in results}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert all(result["weights"] == "GGUF stand-in" for result in results)
    assert tokenizer_folder(gguf) == folder
    assert entries(cache) == [folder.name]  # the loser's partial folder is gone


# -- faithfulness, on the embedded model ---------------------------------------------------------

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello there, how are you?",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Ünïcödé: 数学 🙂 — naïve café",
    "<|im_start|>user\nraw special tokens<|im_end|>",
    "def f(x):\n    return x ** 2  # code",
]
CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}],
]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The module's cache folder of the embedded GGUF, and the (model, tokenizer) transformers
    loaded from the GGUF while making it: the reference to compare the cache with."""
    from stillroom.llm.llamacpp import embedded_model_path

    loaded: list[tuple[Any, Any]] = []
    real_load = gguf_dense.load_gguf

    def keep(gguf: Path) -> tuple[Any, Any]:
        loaded.append(real_load(gguf))
        return loaded[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV_VAR, str(tmp_path_factory.mktemp("model-cache")))
        patch.setattr(gguf_dense, "load_gguf", keep)
        folder = dense_folder(embedded_model_path())
        assert folder is not None and len(loaded) == 1
        model, tokenizer = loaded[0]
        yield {"folder": folder, "gguf": embedded_model_path(), "model": model.eval(),
               "tokenizer": tokenizer, "loads": loaded}


def test_the_cached_model_gives_the_ggufs_logits_bit_for_bit(embedded: dict[str, Any]) -> None:
    from stillroom.train.student import load_model

    model, tokenizer = load_model(None)  # through the cache: no second GGUF load
    assert len(embedded["loads"]) == 1
    reference = embedded["model"]
    assert type(model) is type(reference) and model.dtype == reference.dtype == torch.float32
    assert model.generation_config.to_dict() == reference.generation_config.to_dict()
    batch = tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    with torch.inference_mode():
        cached = model(**batch).logits
        direct = reference(**batch).logits
    assert torch.equal(cached, direct)
    weights = model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(weights[name], tensor), name


def test_the_cached_tokenizer_is_the_ggufs(embedded: dict[str, Any]) -> None:
    from stillroom.train.kd import load_tokenizer

    class Config:
        def path(self, name: str) -> Path:
            return Path(name)

    cached = load_tokenizer(Config(), str(embedded["gguf"]))  # type: ignore[arg-type]
    assert Path(cached.name_or_path) == embedded["folder"]  # read from the cache, not converted
    reference = embedded["tokenizer"]
    for text in TEXTS:
        for special in (False, True):
            ids = cached(text, add_special_tokens=special)["input_ids"]
            assert ids == reference(text, add_special_tokens=special)["input_ids"]
            assert cached.decode(ids) == reference.decode(ids)
    for chat in CHATS:
        for prompt in (False, True):
            rendered = cached.apply_chat_template(chat, tokenize=False,
                                                  add_generation_prompt=prompt)
            assert rendered == reference.apply_chat_template(chat, tokenize=False,
                                                             add_generation_prompt=prompt)
    assert cached.get_vocab() == reference.get_vocab()
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id", "all_special_ids"):
        assert getattr(cached, attribute) == getattr(reference, attribute), attribute


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
async def test_the_backend_loads_the_cache_in_its_dtype_and_still_names_the_gguf(
    embedded: dict[str, Any], dtype: str
) -> None:
    from stillroom.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend(str(embedded["gguf"]), dtype=dtype)
    identity = backend.cache_identity()
    assert identity["model"] == embedded["gguf"].name
    assert identity["size"] == embedded["gguf"].stat().st_size
    try:
        backend.load()
        assert len(embedded["loads"]) == 1  # the cache's folder, not the GGUF
        assert backend.cache_identity() == identity
        weights = backend._model.state_dict()
        # transformers unpacks a GGUF asked for in bfloat16 into the same values as float32 cast
        # to bfloat16 (checked once by hand; a second GGUF load costs this module ~15 s).
        for name, tensor in embedded["model"].state_dict().items():
            assert torch.equal(weights[name], tensor.to(getattr(torch, dtype))), name
    finally:
        await backend.aclose()
