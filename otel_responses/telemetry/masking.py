"""OpenInference masking (``OPENINFERENCE_HIDE_*``) of finished attributes, without its leaks.

The reference TraceConfig hides message text but leaves it in ``input.value``/``output.value``,
tool-call arguments and reasoning blobs; here hiding text hides it everywhere it appears.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from otel_responses.protocol.attributes import Attributes
from otel_responses.protocol.body import json_text

log = logging.getLogger("otel_responses.telemetry")

REDACTED = "__REDACTED__"
DEFAULT_BASE64_IMAGE_MAX_LENGTH = 32_000

# Every leaf that can carry what the user or model wrote, not only the OpenInference text keys.
_TEXT_LEAVES = (".message.content", ".message_content.text", ".tool_call.function.arguments",
                ".message_content.encrypted_content", ".document.document.content")
_IMAGE_LEAF = ".message_content.image.image.url"
_DATA_IMAGE = re.compile(r"^data:image/[^;,]*;base64,")
# The same inside JSON text, with its data (a JSON writer may escape "/" as "\\/").
_BASE64_IMAGE = re.compile(r"data:image/[^;,\"]*;base64,[A-Za-z0-9+/=\\]*")
# A JSON string can spell "input_image" without its bytes doing so, and masking must not be
# dodged that way: with a \u escape of one of its letters (U+005F to U+0075), or in UTF-16 or
# UTF-32, which json.loads also reads and whose ASCII characters all carry a NUL byte.
_LETTER_ESCAPE = re.compile(rb"\\u00[5-7]")


@dataclass(frozen=True, slots=True)
class MaskingConfig:
    """One flag per ``OPENINFERENCE_HIDE_<NAME>`` variable, same defaults as the reference."""

    hide_llm_invocation_parameters: bool = False
    hide_llm_tools: bool = False
    hide_inputs: bool = False
    hide_outputs: bool = False
    hide_input_messages: bool = False
    hide_output_messages: bool = False
    hide_input_images: bool = False
    hide_input_text: bool = False
    hide_output_text: bool = False
    # Completions, embeddings and retrieval attributes are never emitted for Responses calls;
    # the variables are accepted so one environment can configure every OpenInference tracer.
    hide_prompts: bool = False
    hide_choices: bool = False
    hide_embeddings_vectors: bool = False
    hide_embeddings_text: bool = False
    hide_retrieval_documents: bool = False
    base64_image_max_length: int = DEFAULT_BASE64_IMAGE_MAX_LENGTH

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MaskingConfig:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "base64_image_max_length":
                raw = env.get("OPENINFERENCE_BASE64_IMAGE_MAX_LENGTH")
                values[f.name] = _parse_int(raw, f.name) if raw else f.default
                continue
            name = "OPENINFERENCE_" + f.name.upper()
            raw = env.get(name)
            if raw is None and f.name == "hide_embeddings_vectors":
                raw = env.get("OPENINFERENCE_HIDE_EMBEDDING_VECTORS")  # the older spelling
            values[f.name] = _parse_bool(raw, name, f.default)
        return cls(**values)

    # input.value and output.value hold every message and its text: hiding either hides them.
    @property
    def redacts_input_value(self) -> bool:
        return self.hide_inputs or self.hide_input_messages or self.hide_input_text

    @property
    def redacts_output_value(self) -> bool:
        return self.hide_outputs or self.hide_output_messages or self.hide_output_text

    @property
    def hides_content(self) -> bool:
        """Whether anything the user or the model wrote is hidden: an upstream's error message
        can echo either (a 400 quoting the prompt), so it is left out of the span status."""
        return self.redacts_input_value or self.redacts_output_value

    @property
    def hides_anything(self) -> bool:
        """Whether any ``OPENINFERENCE_HIDE_*`` is set; if not, only oversized images change."""
        return any(_HIDE_FLAGS(self))


_HIDE_FLAGS = attrgetter(*(f.name for f in fields(MaskingConfig) if f.name.startswith("hide_")))


def _parse_bool(raw: str | None, name: str, default: bool) -> bool:
    if raw is None:
        return default
    if raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    log.warning("ignoring %s=%r: expected true or false", name, raw)
    return default


def _parse_int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        log.warning("ignoring OPENINFERENCE_%s=%r: expected an integer", name.upper(), raw)
        return DEFAULT_BASE64_IMAGE_MAX_LENGTH


def _drop(key: str, cfg: MaskingConfig) -> bool:
    if key.startswith("llm.invocation_parameters"):
        return cfg.hide_llm_invocation_parameters
    if key.startswith("llm.tools."):
        return cfg.hide_llm_tools or cfg.hide_inputs
    if key == "input.mime_type":
        return cfg.hide_inputs
    if key == "output.mime_type":
        return cfg.hide_outputs
    if key.startswith("llm.input_messages."):
        return (cfg.hide_inputs or cfg.hide_input_messages
                or (cfg.hide_input_images and _IMAGE_LEAF in key))
    if key.startswith("llm.output_messages."):
        return cfg.hide_outputs or cfg.hide_output_messages
    if key.startswith("input.images."):
        return cfg.hide_inputs or cfg.hide_input_images
    if key.startswith("output.images."):
        return cfg.hide_outputs
    if key in ("gen_ai.tool.definitions", "tool.description", "tool.parameters"):
        return cfg.hide_llm_tools or cfg.hide_inputs
    if key in ("gen_ai.input.messages", "gen_ai.system_instructions"):
        return cfg.hide_inputs or cfg.hide_input_messages
    if key == "gen_ai.output.messages":
        return cfg.hide_outputs or cfg.hide_output_messages
    return False


def _redact(key: str, value: Any, cfg: MaskingConfig) -> bool:
    if key in ("input.value", "llm.prompt_template.variables"):
        return cfg.redacts_input_value
    if key == "output.value":
        return cfg.redacts_output_value
    if key in ("gen_ai.input.messages", "gen_ai.system_instructions"):
        return cfg.hide_input_text
    if key == "gen_ai.output.messages":
        return cfg.hide_output_text
    if key.endswith(_TEXT_LEAVES):
        if key.startswith("llm.input_messages."):
            return cfg.hide_input_text
        if key.startswith("llm.output_messages."):
            return cfg.hide_output_text
    if key.endswith((_IMAGE_LEAF, ".image.url")) and isinstance(value, str):
        return _oversized_image(value, cfg)
    return False


def _oversized_image(url: str, cfg: MaskingConfig) -> bool:
    return len(url) > cfg.base64_image_max_length and bool(_DATA_IMAGE.match(url))


def mask(attributes: Attributes, cfg: MaskingConfig) -> Attributes:
    """A copy of ``attributes`` with hidden keys dropped and hidden values replaced."""
    if not cfg.hides_anything:
        # The default. One suffix test per key instead of _drop's and _redact's dozen: a long
        # conversation has hundreds of keys on every span.
        return {key: REDACTED if key.endswith(".image.url") and isinstance(value, str)
                and _oversized_image(value, cfg) else value
                for key, value in attributes.items()}
    out: Attributes = {}
    for key, value in attributes.items():
        if _drop(key, cfg):
            continue
        out[key] = REDACTED if _redact(key, value, cfg) else value
    return out


def masked_request(raw: bytes, body: Any, cfg: MaskingConfig) -> tuple[Any, str]:
    """The request with hidden or oversized images replaced, and its text for ``input.value``:
    the request as sent, or re-serialised if images had to go.

    ``body`` is ``raw`` parsed, or None when it is not JSON the parser could read (too deep,
    say). Most requests hold no image at all, which the bytes tell far faster than walking
    (and copying) the parsed body. Every attribute made from the request (the GenAI messages
    too) is made from what this returns, so an image hidden in one is hidden in all.
    """
    if _may_hold_input_image(raw):
        if body is None:
            return None, _unparsed_text(raw, cfg)
        masked = mask_images_in_request(body, cfg)
        if masked is not None:
            return masked, json_text(masked)
    return body, raw.decode("utf-8", "replace")


def _unparsed_text(raw: bytes, cfg: MaskingConfig) -> str:
    """A request that may hold an image but could not be parsed: every image hidden with
    ``hide_input_images`` (which an unparsed body cannot single out), else long base64 image
    data cut out of the text as it stands."""
    if cfg.hide_input_images:
        return REDACTED
    text = raw.decode("utf-8", "replace")
    return _BASE64_IMAGE.sub(lambda m: REDACTED if _oversized_image(m[0], cfg) else m[0], text)


def _may_hold_input_image(raw: bytes) -> bool:
    """False only if the JSON text ``raw`` certainly has no ``"input_image"`` string."""
    # Three scans: a regex alternation would forgo the fast literal search (20 times slower).
    return (b"input_image" in raw or b"\x00" in raw
            or _LETTER_ESCAPE.search(raw) is not None)


def mask_images_in_request(body: Any, cfg: MaskingConfig) -> Any | None:
    """The request with hidden or oversized images replaced, or None when nothing changes.

    ``input.value`` is the raw request; when images must go, it is re-serialised from this.
    The walk is iterative (a request can nest deeper than Python's stack), and only the
    containers on the way to a replaced image are copied.
    """
    found: list[tuple[int, Any]] = []  # (parent entry, key) of each image to hide
    steps: list[tuple[int, Any]] = [(-1, None)]  # (parent entry, key) of every container
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        node, entry = stack.pop()
        if isinstance(node, dict):
            url = node.get("image_url")
            if (node.get("type") == "input_image" and isinstance(url, str)
                    and (cfg.hide_input_images or _oversized_image(url, cfg))):
                found.append((entry, "image_url"))
                continue
            pairs: Any = node.items()
        elif isinstance(node, list):
            pairs = enumerate(node)
        else:
            continue
        for key, child in pairs:
            if isinstance(child, dict | list):
                steps.append((entry, key))
                stack.append((child, len(steps) - 1))
    if not found:
        return None
    copies: dict[int, Any] = {0: _shallow_copy(body)}  # entry -> its copy

    def copy_of(entry: int) -> Any:
        """The copy of a container, copying those above it that are not yet copied."""
        chain = []
        while entry not in copies:
            chain.append(entry)
            entry = steps[entry][0]
        holder = copies[entry]
        for below in reversed(chain):
            key = steps[below][1]
            copy = _shallow_copy(holder[key])
            holder[key] = copies[below] = copy
            holder = copy
        return holder

    for entry, key in found:
        copy_of(entry)[key] = REDACTED
    return copies[0]


def _shallow_copy(node: Any) -> Any:
    return dict(node) if isinstance(node, dict) else list(node)
