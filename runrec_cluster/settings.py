"""TODO-DOC"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from runrec_cluster.errors import ConfigError


def config_section(path: str, key: str, what: str) -> Any:
    """``[tool.runrec.<key>]`` of a pyproject.toml, or ``[<key>]`` of a runrec.toml (None when
    absent or the file is gone); ConfigError naming the file when it is not valid TOML."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc}. Fix the TOML.") from exc
    t = data.get("tool", {}).get("runrec", {}).get(key)
    if t is None and os.path.basename(path) == "runrec.toml":
        t = data.get(key)
    return t


def find_config_files(start: str) -> list[str]:
    """pyproject.toml and runrec.toml of the nearest directory (walking up) that has either."""
    d = os.path.abspath(start)
    while True:
        found = [
            os.path.join(d, n)
            for n in ("runrec.toml", "pyproject.toml")
            if os.path.isfile(os.path.join(d, n))
        ]
        if found:
            return found
        parent = os.path.dirname(d)
        if parent == d:
            return []
        d = parent
