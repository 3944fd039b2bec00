"""The keys file: the typed validator agrees with the published JSON Schema, keys are kept as
digests, and no error message ever quotes a key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from otel_responses.guard.keys import SCHEMA_PATH, KeysFile, KeysFileError, Limits, load, parse

SECRET = "sk-top-secret-0123456789"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
ENV = {"TEAM_KEY": "sk-upstream-team"}

FULL: dict[str, Any] = {
    "keys": [
        {"name": "ci-bot", "key": SECRET, "user_id": "svc-ci", "team": "platform",
         "metadata": {"owner": "ops", "tier": 2}, "models": ["gpt-4o*", "o3-mini"],
         "upstream_api_key": "sk-upstream-ci",
         "limits": {"requests_per_minute": 60, "tokens_per_minute": 100000,
                    "tokens_per_day": 2000000, "max_concurrent": 4,
                    "usd_per_day": 2.5, "usd_per_month": 40}},
        {"name": "notebook", "key_sha256": hashlib.sha256(b"sk-notebook").hexdigest(),
         "upstream_api_key_env": "TEAM_KEY"},
    ],
    "default_limits": {"requests_per_minute": 10},
    "model_limits": {"o3*": {"tokens_per_day": 50000}},
}

# Each of these breaks one rule of the schema.
INVALID: list[dict[str, Any]] = [
    {},
    {"keys": {}},
    {"keys": [], "extra": 1},
    {"keys": [{"name": "a"}]},  # neither key nor key_sha256
    {"keys": [{"name": "a", "key": SECRET, "key_sha256": "0" * 64}]},  # both
    {"keys": [{"key": SECRET}]},  # no name
    {"keys": [{"name": "", "key": SECRET}]},
    {"keys": [{"name": "a", "key_sha256": "xyz"}]},
    {"keys": [{"name": "a", "key": SECRET + "\n"}]},
    {"keys": [{"name": "a", "key": SECRET, "surname": "b"}]},
    {"keys": [{"name": "a", "key": SECRET, "models": "gpt-4o"}]},
    {"keys": [{"name": "a", "key": SECRET, "limits": {"requests_per_minute": 0}}]},
    {"keys": [{"name": "a", "key": SECRET, "limits": {"requests_per_minute": 1.5}}]},
    {"keys": [{"name": "a", "key": SECRET, "limits": {"requests_per_hour": 1}}]},
    {"keys": [{"name": "a", "key": SECRET, "upstream_api_key": "k",
               "upstream_api_key_env": "TEAM_KEY"}]},
    {"keys": [], "default_limits": {"max_concurrent": -1}},
    {"keys": [], "default_limits": {"usd_per_day": 0}},
    {"keys": [], "default_limits": {"usd_per_month": "5"}},
    {"keys": [], "default_limits": {"usd_per_month": float("inf")}},
    {"keys": [], "model_limits": {"gpt*": {"tokens_per_day": True}}},
    {"keys": [{"name": "a", "key": SECRET, "metadata": ["x"]}]},
]


def test_full_example_is_valid_for_both() -> None:
    jsonschema.validate(FULL, SCHEMA)
    keys = parse(FULL, ENV)
    ci = keys.find(SECRET)
    assert ci is not None and ci.caller.name == "ci-bot" and ci.caller.user_id == "svc-ci"
    assert ci.upstream_api_key == "sk-upstream-ci"
    assert ci.allows("gpt-4o-mini") and ci.allows("o3-mini") and not ci.allows("gpt-5")
    notebook = keys.find("sk-notebook")
    assert notebook is not None and notebook.caller.user_id == "notebook"  # the name
    assert notebook.upstream_api_key == "sk-upstream-team" and notebook.allows("anything")
    assert keys.limits_of(notebook) == Limits(requests_per_minute=10)
    assert keys.limits_of(ci) == Limits(60, 100000, 2000000, 4, 2.5, 40.0)
    assert keys.model_limit("o3-pro") == ("o3*", Limits(tokens_per_day=50000))
    assert keys.model_limit("gpt-4o") is None
    assert keys.find("sk-unknown") is None and keys.needs_model
    assert SECRET not in repr(keys)  # only its digest is kept


@pytest.mark.parametrize("document", INVALID, ids=range(len(INVALID)))
def test_invalid_documents_are_refused_by_both(document: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)
    with pytest.raises(KeysFileError) as caught:
        parse(document, ENV)
    assert SECRET not in str(caught.value)


def test_checks_beyond_the_schema() -> None:
    """What a schema cannot say: unique names and keys, and a set environment variable."""
    twice = {"keys": [{"name": "a", "key": SECRET}, {"name": "a", "key": "other"}]}
    same = {"keys": [{"name": "a", "key": SECRET},
                     {"name": "b", "key_sha256": hashlib.sha256(SECRET.encode()).hexdigest()}]}
    unset = {"keys": [{"name": "a", "key": SECRET, "upstream_api_key_env": "UNSET_VAR"}]}
    for document, message in ((twice, "not unique"), (same, "same key"), (unset, "not set")):
        jsonschema.validate(document, SCHEMA)
        with pytest.raises(KeysFileError, match=message) as caught:
            parse(document, ENV)
        assert SECRET not in str(caught.value)


_limit_values = st.one_of(st.integers(-2, 3), st.floats(allow_nan=False), st.booleans(),
                          st.none(), st.text(max_size=3))


@given(st.dictionaries(st.sampled_from(["requests_per_minute", "tokens_per_day", "usd_per_day",
                                        "burst"]),
                       _limit_values, max_size=3),
       st.sampled_from(["key", "key_sha256"]), st.text(max_size=70))
def test_validator_agrees_with_the_schema(limits: dict[str, Any], field: str,
                                          value: str) -> None:
    document = {"keys": [{"name": "k", field: value, "limits": limits}]}
    try:
        jsonschema.validate(document, SCHEMA)
        schema_ok = True
    except jsonschema.ValidationError:
        schema_ok = False
    try:
        parse(document, ENV)
        ours_ok = True
    except KeysFileError:
        ours_ok = False
    assert ours_ok == schema_ok


def test_yaml_and_json_files_load(tmp_path: Path) -> None:
    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps(FULL))
    as_yaml = tmp_path / "keys.yaml"
    as_yaml.write_text("keys:\n  - name: a\n    key: " + SECRET + "\n")
    assert load(as_json, ENV).find(SECRET) is not None
    assert load(as_yaml).find(SECRET) is not None
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"keys:\n  - name: a\n    key: [{SECRET}\n")
    with pytest.raises(KeysFileError) as caught:
        load(broken)
    assert SECRET not in str(caught.value)


def test_reload_follows_a_swapped_symlink_and_keeps_the_last_good(tmp_path: Path) -> None:
    """A Kubernetes Secret volume: the file is a symlink through ..data, swapped at once."""
    def version(name: str, text: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "keys.yaml").write_text(text)
        link = tmp_path / "..data_tmp"
        link.symlink_to(folder)
        link.replace(tmp_path / "..data")

    version("v1", f"keys: [{{name: a, key: {SECRET}}}]")
    (tmp_path / "keys.yaml").symlink_to(tmp_path / "..data" / "keys.yaml")
    watched = KeysFile(tmp_path / "keys.yaml")
    assert watched.value.find(SECRET) is not None
    assert not watched.check()  # unchanged
    version("v2", "keys: [{name: b, key: sk-b}]")
    assert watched.value.find("sk-b") is None  # read only when looked at
    assert watched.check()
    assert watched.value.find("sk-b") is not None and watched.value.find(SECRET) is None
    version("v3", "keys: {broken")
    assert not watched.check()
    assert watched.value.find("sk-b") is not None  # the last good one


def test_the_readme_example_is_valid() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Keys and limits"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n", 8)]
    document = yaml.safe_load(example)
    jsonschema.validate(document, SCHEMA)
    keys = parse(document, {"OPENAI_KEY_PLATFORM": "sk-platform"})
    ci = keys.find("sk-ci-3f9a0c2b7d")
    assert ci is not None and ci.upstream_api_key == "sk-platform"
    assert keys.find("foo") is not None  # the notebook's digest
