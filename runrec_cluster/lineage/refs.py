"""TODO-DOC"""

from __future__ import annotations


def run_node(run_id: str) -> str:
    return f"run:{run_id}"


def dataset_node(digest: str) -> str:
    return f"dataset:{digest}"


def artifact_node(run_id: str, name: str) -> str:
    return f"artifact:{run_id}:{name}"


def promoted_node(name: str, version: int) -> str:
    return f"promoted:{name}@v{version}"
