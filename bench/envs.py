"""Side environments the suite installs itself: tools (matplotlib, py-spy, uv), LiteLLM, and the
HTTP client libraries the upstream-client comparison swaps in (aiohttp, httpx).

Both live under ``bench/`` in git-ignored ``.venv-*`` folders and are reused when present.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TOOLS = BENCH / ".venv-tools"
LITELLM = BENCH / ".venv-litellm"
CLIENTS = BENCH / ".venv-clients"
CLIENTS_PACKAGES = ("aiohttp", "httpx")
TOOLS_PACKAGES = ("matplotlib", "py-spy", "uv")
# pip cannot resolve litellm[proxy] against the certifi the registry has; uv with an
# override can (see shared/docs/real-components.md).
CERTIFI_OVERRIDE = "certifi==2026.10.18"


def _run(argv: list[str], log: Path, timeout: float) -> bool:
    with open(log, "ab") as out:
        try:
            return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def tools_python(log: Path) -> Path | None:
    """The tools venv's python, installing it on first use (~40 s)."""
    python = TOOLS / "bin" / "python"
    marker = TOOLS / ".complete"
    if marker.exists():
        return python
    ok = (_run([sys.executable, "-m", "venv", str(TOOLS)], log, 120)
          and _run([str(python), "-m", "pip", "install", "-q", *TOOLS_PACKAGES], log, 600))
    if ok:
        marker.touch()
    return python if ok else None


def clients_site() -> Path:
    """site-packages of the clients venv, for the interpreter running this (same version)."""
    return (CLIENTS / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
            / "site-packages")


def install_clients(log: Path) -> bool:
    """aiohttp and httpx in a venv of their own (~20 s on first use), never the product's."""
    marker = CLIENTS / ".complete"
    if marker.exists():
        return True
    python = CLIENTS / "bin" / "python"
    ok = (_run([sys.executable, "-m", "venv", str(CLIENTS)], log, 120)
          and _run([str(python), "-m", "pip", "install", "-q", *CLIENTS_PACKAGES], log, 600))
    if ok:
        marker.touch()
    return ok


def litellm_binary(log: Path) -> tuple[Path | None, str]:
    """(the ``litellm`` executable, its version) or (None, why not)."""
    binary = LITELLM / "bin" / "litellm"
    marker = LITELLM / ".complete"
    if not marker.exists():
        tools = tools_python(log)
        if tools is None:
            return None, "the tools venv (uv) could not be installed"
        uv = str(tools.parent / "uv")
        override = BENCH / ".litellm-override.txt"
        override.write_text(CERTIFI_OVERRIDE + "\n")
        try:
            ok = (_run([uv, "venv", "-q", "--python", sys.executable, str(LITELLM)], log, 120)
                  and _run([uv, "pip", "install", "-q", "-p", str(LITELLM / "bin" / "python"),
                            "litellm[proxy]", "--override", str(override)], log, 900))
        finally:
            override.unlink(missing_ok=True)
        if not ok:
            return None, f"`uv pip install 'litellm[proxy]'` failed (log: {log})"
        marker.touch()
    try:
        version = subprocess.run(
            [str(LITELLM / "bin" / "python"), "-c",
             "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, "LiteLLM is installed but does not import"
    return binary, version
