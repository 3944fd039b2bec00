"""The keys file (``--api-keys``): parsed and validated as ``keys.schema.json`` says, keys kept
only as their SHA-256 digests, and looked up by digest."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from otel_responses.caller import Caller
from otel_responses.watched_file import WatchedFile

log = logging.getLogger("otel_responses.guard")

SCHEMA_PATH = Path(__file__).with_name("keys.schema.json")
COUNT_NAMES = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent")
BUDGET_NAMES = ("usd_per_day", "usd_per_month")  # USD, calendar windows in UTC
LIMIT_NAMES = COUNT_NAMES + BUDGET_NAMES
MAX_USD = 1_000_000_000  # the schema's maximum: a finite budget (YAML can write .inf)
_KEY_FIELDS = frozenset({"name", "key", "key_sha256", "user_id", "team", "metadata", "models",
                         "upstream_api_key", "upstream_api_key_env", "limits"})
_TOP_FIELDS = frozenset({"keys", "default_limits", "model_limits"})
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the place, never a key's value."""


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_concurrent: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One inbound key: who it is, what it may call, what it sends upstream, its limits."""

    digest: bytes
    caller: Caller
    models: tuple[str, ...] | None = None  # globs; None: any model
    upstream_api_key: str | None = field(default=None, repr=False)
    limits: Limits | None = None  # None: the file's default_limits

    def allows(self, model: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(model, glob)
                                          for glob in self.models)


@dataclass(frozen=True, slots=True)
class Keys:
    """A loaded keys file."""

    by_digest: Mapping[bytes, ApiKey]
    default_limits: Limits = field(default_factory=Limits)
    model_limits: tuple[tuple[str, Limits], ...] = ()
    # Whether any check needs the request's model (so its body must be read first): known
    # once the file is loaded, read on every request.
    needs_model: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs_model", bool(self.model_limits) or any(
            k.models is not None for k in self.by_digest.values()))

    def find(self, key: str) -> ApiKey | None:
        # A dict lookup by digest: no comparison with a stored key, so no timing leak.
        return self.by_digest.get(digest(key))

    def limits_of(self, key: ApiKey) -> Limits:
        return key.limits if key.limits is not None else self.default_limits

    def model_limit(self, model: str) -> tuple[str, Limits] | None:
        """The first ``model_limits`` glob ``model`` matches, with its limits."""
        return next(((glob, limits) for glob, limits in self.model_limits
                     if fnmatch.fnmatchcase(model, glob)), None)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Keys:
    """Read and validate the keys file (YAML, or JSON which YAML reads too)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"cannot read the keys file {path}: {exc.__class__.__name__}") \
            from None
    try:
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        # The parsers' messages quote the offending line, which may hold a key: only where.
        where = getattr(exc, "problem_mark", None) or getattr(exc, "lineno", None)
        raise KeysFileError(f"the keys file {path} is not valid YAML or JSON (near {where})") \
            from None
    try:
        return parse(document, os.environ if env is None else env)
    except KeysFileError as exc:
        raise KeysFileError(f"the keys file {path}: {exc}") from None


def parse(document: Any, env: Mapping[str, str]) -> Keys:
    """Validate ``document`` as the schema does (tests check they agree) and build `Keys`."""
    top = _mapping(document, "the file", _TOP_FIELDS)
    if "keys" not in top:
        raise KeysFileError("the file has no 'keys' list")
    keys = _list(top["keys"], "keys")
    by_digest: dict[bytes, ApiKey] = {}
    names: set[str] = set()
    for i, raw in enumerate(keys):
        key = _api_key(raw, f"keys[{i}]", env)
        if key.caller.name in names:
            raise KeysFileError(f"keys[{i}].name is not unique")
        if key.digest in by_digest:
            raise KeysFileError(f"keys[{i}] has the same key as another entry")
        names.add(key.caller.name)
        by_digest[key.digest] = key
    default = _limits(top["default_limits"], "default_limits") if "default_limits" in top \
        else Limits()
    model_limits = tuple(
        (glob, _limits(value, f"model_limits[{glob!r}]"))
        for glob, value in _mapping(top.get("model_limits", {}), "model_limits", None).items())
    return Keys(by_digest, default, model_limits)


def _api_key(raw: Any, where: str, env: Mapping[str, str]) -> ApiKey:
    entry = _mapping(raw, where, _KEY_FIELDS)
    name = _text(entry.get("name"), f"{where}.name")
    if ("key" in entry) == ("key_sha256" in entry):
        raise KeysFileError(f"{where} needs exactly one of 'key' and 'key_sha256'")
    if "key" in entry:
        key_digest = digest(_header(entry["key"], f"{where}.key"))
    else:
        hexed = entry["key_sha256"]
        if not isinstance(hexed, str) or not _SHA256.fullmatch(hexed):
            raise KeysFileError(f"{where}.key_sha256 must be 64 hex digits")
        key_digest = bytes.fromhex(hexed)
    if "upstream_api_key" in entry and "upstream_api_key_env" in entry:
        raise KeysFileError(f"{where} has both upstream_api_key and upstream_api_key_env")
    upstream = None
    if "upstream_api_key" in entry:
        upstream = _header(entry["upstream_api_key"], f"{where}.upstream_api_key")
    elif "upstream_api_key_env" in entry:
        variable = _text(entry["upstream_api_key_env"], f"{where}.upstream_api_key_env")
        if not env.get(variable):
            raise KeysFileError(f"{where}.upstream_api_key_env: {variable} is not set")
        upstream = _header(env[variable], f"{where}.upstream_api_key_env ({variable})")
    models = None
    if "models" in entry:
        models = tuple(_text(glob, f"{where}.models[{j}]")
                       for j, glob in enumerate(_list(entry["models"], f"{where}.models")))
    caller = Caller(
        name=name,
        user_id=_text(entry["user_id"], f"{where}.user_id") if "user_id" in entry else name,
        team=_text(entry["team"], f"{where}.team") if "team" in entry else None,
        metadata=_mapping(entry.get("metadata", {}), f"{where}.metadata", None))
    limits = _limits(entry["limits"], f"{where}.limits") if "limits" in entry else None
    return ApiKey(key_digest, caller, models, upstream, limits)


def _limits(raw: Any, where: str) -> Limits:
    values = _mapping(raw, where, frozenset(LIMIT_NAMES))
    counts: dict[str, float] = {}
    for name, value in values.items():
        # As JSON Schema's "integer" and "number": 5.0 is an integer, true is neither.
        number = type(value) in (int, float) and math.isfinite(value)
        if name in BUDGET_NAMES:
            if not number or not 0 < value <= MAX_USD:
                raise KeysFileError(f"{where}.{name} must be a number > 0 and <= {MAX_USD} "
                                    "(USD)")
            counts[name] = float(value)
        elif not (number and float(value).is_integer()) or value < 1:
            raise KeysFileError(f"{where}.{name} must be an integer >= 1")
        else:
            counts[name] = int(value)
    return Limits(**counts)


def _mapping(raw: Any, where: str, fields: frozenset[str] | None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise KeysFileError(f"{where} must be a mapping")
    if fields is not None:
        unknown = sorted(str(k) for k in raw if k not in fields)
        if unknown:
            raise KeysFileError(f"{where} has unknown fields: {', '.join(unknown)}")
    if not all(isinstance(k, str) for k in raw):
        raise KeysFileError(f"{where} must have string keys")
    return raw


def _list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list):
        raise KeysFileError(f"{where} must be a list")
    return raw


def _text(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise KeysFileError(f"{where} must be a non-empty string")
    return raw


def _header(raw: Any, where: str) -> str:
    # Keys travel in headers: a line break would end the header and start another.
    if not isinstance(raw, str) or not raw or not all(" " <= c <= "~" or c == "\t" for c in raw):
        raise KeysFileError(f"{where} must be a non-empty string of printable ASCII")
    return raw


class KeysFile(WatchedFile[Keys]):
    """The keys file as `Keys`, re-read off the event loop when it changes (`WatchedFile`):
    keys added, removed or changed take effect; a broken file keeps the last good keys."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, load, KeysFileError, what="keys file", log=log)
