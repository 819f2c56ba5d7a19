"""Secrets: values stillroom must never write anywhere (rows, logs, card, report, messages).

Keys are read from the environment at the moment they are used (see the backends), and every
text that leaves the process through stillroom (a failed row's ``error``, a printed error, the
card and report, the session log) passes :func:`redact` first. ``redact`` removes

* every value registered with :func:`register` (each backend registers its key when it reads it),
* the value of every environment variable whose name says it holds a secret (``*_API_KEY``,
  ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``), so a key the code never asked for is covered too,
* a long enough piece of any of those (a server that echoes ``sk-abc1...`` or the key's tail),
* credentials written into a URL (``https://user:key@host``, ``?key=...``, ``&token=...``) and
  ``Bearer``/``x-api-key`` values,
* strings shaped like the common providers' keys (``sk-...``, ``sk-ant-...``, ``hf_...``).

:func:`redact_value` (for the config, summaries and rows written whole) masks besides every value
under a key named like a secret (``extra_body: {password: ...}``), whatever it looks like.

Written by hand: no library we use does redaction of known values over free text.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any
from urllib.parse import urlsplit

MASK = "***"
# Shorter values are not treated as secrets: masking "abc" everywhere would mangle text.
MIN_SECRET_LENGTH = 8
# A piece of a secret at least this long is masked too (servers quote part of a bad key).
MIN_FRAGMENT = 8

_SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
# Variables that name where a secret is (ACTIONS_ID_TOKEN_REQUEST_URL, AWS_WEB_IDENTITY_TOKEN_FILE,
# GOOGLE_APPLICATION_CREDENTIALS): their values are URLs and paths, and masking every 8-character
# piece of them ("https://", "/home/al") would mangle ordinary text. A value that is a URL or a
# path is not taken for a key either (a key may hold "/", as AWS secret keys do, but does not
# start with one).
_NOT_A_SECRET_NAME = re.compile(r"(_URL|_URI|_FILE|_PATH|_DIR|_ENDPOINT|APPLICATION_CREDENTIALS)$",
                                re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s:]*(?::[^/@\s]*)?)@")
# A credential after its name: "x-api-key: abc...", "password=abc...", "Authorization: Bearer
# abc...". A named field needs its ":" or "=", so prose ("Authorization required") is left alone.
_NAMED_VALUE = re.compile(
    r"(?P<name>\b(?:x-api-key|api[_-]?key|authorization|password|passwd|secret|access[_-]?token)\b"
    r"[\"']?\s*[:=]\s*[\"']?(?:(?:Bearer|Basic)\s+)?)"
    r"(?P<value>[A-Za-z0-9._~+/=\-]{8,})",
    re.IGNORECASE,
)
# "Bearer abc1..." on its own: the scheme as HTTP writes it, and a value with a digit in it, so
# "Basic information" is prose, not a credential.
_AUTH_SCHEME = re.compile(r"(?P<name>\b(?:Bearer|Basic)\s+)(?P<value>(?=\S*\d)[A-Za-z0-9._~+/=\-]{8,})")
# A secret in a URL's query string ("http://host/v1?key=abc", "&access_token=...", a signed
# URL's "&X-Amz-Signature=..."): a parameter named (or ending) like a secret, whatever its value's
# length, up to the next "&", "#", space or quote. Only after "?", "&" or ";", so prose is left.
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:[A-Za-z0-9_.\-]*?[_.\-])?"
    r"(?:api[_-]?key|key|token|sig|signature|secret|password|passwd|pwd|credential|auth)=)"
    r"(?P<value>[^&#\s\"'<>]+)",
    re.IGNORECASE,
)
# Dict keys whose value is a secret whatever it looks like ("extra_body: {api_key: abc}",
# "headers: {Authorization: ...}"): compared lowercased with "-" read as "_". Whole names only:
# "api_key_env" names a variable, "max_tokens" and "eos_token" are settings, not secrets.
_SECRET_KEYS = frozenset({
    "api_key", "apikey", "key", "token", "access_token", "refresh_token", "id_token",
    "auth_token", "bearer_token", "session_token", "secret", "secret_key", "api_secret",
    "password", "passwd", "pwd", "authorization", "proxy_authorization", "auth", "credential",
    "credentials", "private_key", "client_secret", "x_api_key", "x_auth_token", "access_key",
    "secret_access_key", "sig", "signature",
})
# ... and names ending like one ("openai_api_key", "hf_token" is left: "eos_token" is a setting).
_SECRET_KEY_SUFFIX = re.compile(
    r"_(?:api_?key|secret|secret_key|password|passwd|access_token|auth_token|private_key"
    r"|client_secret|access_key)$"
)

_KEY_SHAPES = re.compile(
    r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{12,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|xox[baprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{30,})"
)

_lock = threading.Lock()
_registered: set[str] = set()


def register(value: str | None) -> None:
    """Remember ``value`` as a secret for the life of the process (long enough values only)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value)


def from_env(name: str) -> str | None:
    """The environment variable ``name``, registered as a secret before it is returned."""
    value = os.environ.get(name)
    register(value)
    return value


def _looks_like_location(value: str) -> bool:
    return "://" in value or value.startswith(("/", "./", "../", "~"))


def known() -> list[str]:
    """Every secret value known now, longest first (so a longer one is masked whole)."""
    values = set(_registered)
    for name, value in os.environ.items():
        if (_SECRET_NAME.search(name) and value and len(value) >= MIN_SECRET_LENGTH
                and not _NOT_A_SECRET_NAME.search(name) and not _looks_like_location(value)):
            values.add(value)
    return sorted(values, key=len, reverse=True)


def _mask_fragments(text: str, secret: str) -> str:
    """Mask every run of at least MIN_FRAGMENT characters of ``secret`` found in ``text``."""
    if len(secret) < MIN_FRAGMENT or len(text) < MIN_FRAGMENT:
        return text
    # Every window of the secret is a needle; a hit is then grown to the longest common run.
    windows = {secret[i : i + MIN_FRAGMENT] for i in range(len(secret) - MIN_FRAGMENT + 1)}
    # Almost every text holds no piece of any secret: find that out with str.find (in C) before
    # walking the text a character at a time.
    if not any(window in text for window in windows):
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        piece = text[i : i + MIN_FRAGMENT]
        if len(piece) == MIN_FRAGMENT and piece in windows:
            end = i + MIN_FRAGMENT
            while end < len(text) and text[i : end + 1] in secret:
                end += 1
            out.append(MASK)
            i = end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# Each pattern runs only where a substring it cannot match without is present: substring tests
# run in C, so a long text with nothing secret in it (most rows, a whole report) costs little.
_NAMED_HINTS = ("key", "authorization", "pass", "secret", "token")
_SHAPE_HINTS = ("sk-", "hf_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox", "AKIA", "AIza")


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
        text = _mask_fragments(text, secret)
    if "@" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    lowered = text.lower()
    if any(hint in lowered for hint in _NAMED_HINTS):
        text = _NAMED_VALUE.sub(lambda m: f"{m['name']}{MASK}", text)
    if "Bearer" in text or "Basic" in text:
        text = _AUTH_SCHEME.sub(lambda m: f"{m['name']}{MASK}", text)
    if "=" in text and ("?" in text or "&" in text or ";" in text):
        text = _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)
    if any(hint in text for hint in _SHAPE_HINTS):
        text = _KEY_SHAPES.sub(MASK, text)
    return text


def redact(text: str) -> str:
    """``text`` with every secret, URL credential and key-shaped string replaced by ``***``."""
    if not text or not isinstance(text, str):
        return text
    return _redact(text, known())


def secret_key(name: Any) -> bool:
    """Whether a dict key names a secret (``api_key``, ``Authorization``, ``x-api-key``...)."""
    if not isinstance(name, str):
        return False
    normal = name.strip().lower().replace("-", "_")
    if any(char.isspace() for char in normal):
        # A sentence, not a name: the key of a reason table ("tool_check: ...: set
        # $WEATHER_API_KEY") holds counts, and masking them broke the report's arithmetic.
        return False
    return normal in _SECRET_KEYS or bool(_SECRET_KEY_SUFFIX.search(normal))


def redact_value(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string inside it: dict keys and values,
    lists, tuples and sets, at any depth (a reason table is keyed by its reasons).

    A value under a key named like a secret (see :func:`secret_key`) is masked whole, whatever
    it looks like: ``extra_body: {password: hunter2hunter2}`` holds no pattern ``redact`` knows,
    and the key is not in the environment. Its strings are masked at any depth below it (a
    ``credentials: {user: .., pass: ..}``), a number right under it too (None and booleans are
    kept); the shape of a container is kept (a column named ``key`` keeps its table of figures)."""
    return _redact_value(value, known())


def _masked(value: Any) -> Any:
    """Every secret a value under a secret's name holds, masked: strings at any depth."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return MASK if value else value
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_masked(item) for item in value))
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_masked(item) for item in value)
    return value  # numbers inside a container: figures, not secrets


def _redact_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return _redact(value, secrets) if value else value
    if isinstance(value, dict):
        # A model's token with its logprob ({"token": "Hello", "logprob": -0.1}, rows of
        # teacher_logprobs shown in the report) is text, not a credential.
        model_token = "logprob" in value
        return {
            _redact_value(key, secrets): (
                _under_secret_key(item)
                if secret_key(key) and not (model_token and key == "token")
                else _redact_value(item, secrets)
            )
            for key, item in value.items()
        }
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_redact_value(item, secrets) for item in value))
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_redact_value(item, secrets) for item in value)
    return value


def _under_secret_key(value: Any) -> Any:
    # A number right under the name (a numeric password YAML read as an int) is masked too.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return MASK
    return _masked(value)


def url_credentials(url: str) -> bool:
    """Whether ``url`` carries ``user:password@`` (or ``token@``) credentials."""
    text = url.strip()
    if _URL_USERINFO.match(text):
        return True
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return "@" in parts.netloc or parts.username is not None or parts.password is not None
