"""Node ids of the lineage graph, one rule each: ``run:<id>``, ``dataset:<digest>``,
``artifact:<run id>:<name>``, ``promoted:<NAME>@v<N>`` (as in ``runrec lineage --json``)."""

from __future__ import annotations


def run_node(run_id: str) -> str:
    """The node of a run."""
    return f"run:{run_id}"


def dataset_node(digest: str) -> str:
    """The node of an input by content: one per content hash, whatever its paths."""
    return f"dataset:{digest}"


def artifact_node(run_id: str, name: str) -> str:
    """The node of an artifact a run logged."""
    return f"artifact:{run_id}:{name}"


def promoted_node(name: str, version: int) -> str:
    """The node of a promoted version."""
    return f"promoted:{name}@v{version}"
