"""Where the project keeps things, and `${VAR}` expansion in pipeline and preset values."""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").exists() else Path.cwd()
STATE_DIR = PROJECT_ROOT / ".nemotron"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def project_defaults() -> dict[str, str]:
    """Variables every pipeline value may use, each overridable from the environment."""
    fixtures = os.environ.get("NEMOTRON_FIXTURES") or str(STATE_DIR / "fixtures")
    return {
        "NEMOTRON_ARTIFACT_ROOT": str(STATE_DIR / "artifacts"),
        "NEMOTRON_FIXTURES": fixtures,
        "NEMOTRON_DATA": str(PACKAGE_DIR / "fixtures" / "data"),
        "NEMOTRON_BASE_MODEL": str(Path(fixtures) / "tiny-llama"),  # `make demo` uses SmolLM2-135M-Instruct
        "NEMOTRON_CPT_INBOX": str(STATE_DIR / "cpt_inbox"),  # new CPT data drops go here, one file or dir each
        "NEMOTRON_CPT_CRON": "0 3 * * 1",  # the CPT refresh: Mondays 03:00 (UTC)
        "NEMOTRON_ROOTFS": str(STATE_DIR / "rootfs" / "job"),  # the container executor's root filesystem
        "NEMOTRON_DIGEST_CACHE": str(STATE_DIR / "digests.sqlite"),  # stat-keyed file digests (digests.py)
    }


def setting(name: str) -> str:
    return os.environ.get(name) or project_defaults()[name]


def expand(value: str) -> str:
    """Expand `${VAR}` from the environment, then the project defaults; unknown variables are an error."""

    def _sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in os.environ:
            return os.environ[name]
        defaults = project_defaults()
        if name not in defaults:
            raise KeyError(f"undefined variable ${{{name}}} in {value!r}")
        return defaults[name]

    return _VAR.sub(_sub, value)
