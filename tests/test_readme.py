"""The README stays true: its test command is what CI runs, and it documents every option."""

from __future__ import annotations

import re
from pathlib import Path

from otel_responses.config import SERVE_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_quickstart_has_two_commands_and_ci_runs_the_test_one() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("Then, in another shell", 1)[0]
    run_cmd, test_cmd = (block.strip() for block in _sh_blocks(quickstart))
    assert run_cmd.endswith("otel-responses")
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_flag_and_env_var_is_documented() -> None:
    for opt in SERVE_OPTIONS:
        assert f"`{opt.flag}`" in README, opt.flag
        assert f"`{opt.env}`" in README, opt.env
