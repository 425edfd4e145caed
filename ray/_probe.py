"""Probe the local runrec Ray cluster; a helper for ray/up, ray/down and ray/diagnose.

Run it with the Python that runs the `ray` CLI (so `import ray` is the same Ray):

    python ray/_probe.py check --address 127.0.0.1:6379 [--dashboard URL] [--wait SECONDS]
    python ray/_probe.py nodes --address 127.0.0.1:6379

`check` prints shell-friendly `key=value` lines and exits 0 when the head, the fake-A100 node
and the OOM-test node are all alive (and the dashboard answers, when asked), 1 when the GCS
answers but something is missing, 2 when no GCS answers, 3 when the GCS belongs to a cluster
that ray/up did not start. `nodes` prints a table of the nodes and their resources.

Node roles are recognised by the custom resources that ray/up declares.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

HEAD_MARK = "hwclass-cpu"
ROLE_MARKS = {"gpu": "hwclass-a100", "oom": "oom-test"}
ROLES = ("head", "gpu", "oom")


def port_open(address: str, timeout: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def import_ray():
    try:
        import ray
    except ImportError as exc:
        sys.exit(
            f"_probe.py: {sys.executable} cannot import ray ({exc}); "
            "set RAY_BIN or PYTHON to an environment with ray[default]"
        )
    if getattr(ray, "__file__", None) is None:
        # A directory named `ray` in the working directory (such as /tmp/ray) imports as an
        # empty namespace package when Ray is not installed.
        sys.exit(
            f"_probe.py: {sys.executable} has no Ray installed "
            f"(`import ray` found only the directory {list(ray.__path__)})"
        )
    return ray


def role_of(node: dict) -> str:
    res = node["resources"]
    if node["is_head"]:
        return "head"
    for role, mark in ROLE_MARKS.items():
        if mark in res:
            return role
    return "other"


def node_list_gcs(address: str) -> list[dict]:
    """Ask the GCS directly: about 0.5 s, no driver is registered."""
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    client = GcsClient(address=address)
    nodes = []
    for node_id, info in client.get_all_node_info(timeout=10).items():
        nodes.append(
            {
                "node_id": node_id.hex(),
                "state": GcsNodeInfo.GcsNodeState.Name(info.state),
                "is_head": bool(info.is_head_node),
                "ip": info.node_manager_address,
                "resources": dict(info.resources_total),
                "temp_dir": info.temp_dir,
                "session_dir": info.session_dir,
                "raylet_socket": info.raylet_socket_name,
                "start_time_ms": info.start_time_ms,
            }
        )
    return nodes


def node_list_driver(address: str) -> list[dict]:
    """Fallback through the public API (a short-lived driver, about 2 s)."""
    ray = import_ray()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        nodes = []
        for n in ray.nodes():
            res = n.get("Resources", {})
            nodes.append(
                {
                    "node_id": n["NodeID"],
                    "state": "ALIVE" if n.get("Alive") else "DEAD",
                    "is_head": "node:__internal_head__" in res,
                    "ip": n.get("NodeManagerAddress", ""),
                    "resources": res,
                    "temp_dir": "",
                    "session_dir": "",
                    "raylet_socket": n.get("RayletSocketName", ""),
                    "start_time_ms": 0,
                }
            )
        return nodes
    finally:
        ray.shutdown()


def node_list(address: str) -> list[dict]:
    import_ray()
    try:
        return node_list_gcs(address)
    except (ImportError, AttributeError, TypeError) as exc:
        # Internal API moved in another Ray version: use the public one.
        print(f"_probe.py: GcsClient unusable ({exc!r}); using ray.nodes()", file=sys.stderr)
        return node_list_driver(address)


def raylet_pids() -> dict[str, int]:
    """node_id -> raylet pid, read from /proc (no psutil needed)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "raylet":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        for arg in args:
            if arg.startswith(b"--node_id="):
                found[arg.split(b"=", 1)[1].decode()] = int(entry)
    return found


def dashboard_ok(url: str) -> bool:
    # /api/jobs/ is served by the JobHead module, which comes up after /api/version:
    # when it answers, the Jobs API works.
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/jobs/", timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_once(args) -> tuple[int, dict]:
    out: dict[str, str] = {"address": args.address}
    if not port_open(args.address):
        out["gcs"] = "down"
        return 2, out
    out["gcs"] = "up"
    nodes = node_list(args.address)
    pids = raylet_pids()
    # All nodes run on this host: a node the GCS still lists as ALIVE whose raylet is gone
    # (killed; the GCS notices only after its health checks fail) counts as missing.
    alive = [n for n in nodes if n["state"] == "ALIVE" and (not pids or n["node_id"] in pids)]
    by_role: dict[str, list[dict]] = {}
    for n in alive:
        by_role.setdefault(role_of(n), []).append(n)
    heads = by_role.get("head", [])
    if heads and HEAD_MARK not in heads[0]["resources"]:
        out["foreign"] = "yes"
        return 3, out
    for role in ROLES:
        ids = [n["node_id"] for n in by_role.get(role, [])]
        out[f"node_{role}"] = ",".join(ids)
        out[f"raylet_pid_{role}"] = ",".join(str(pids[i]) for i in ids if i in pids)
    if by_role.get("other"):
        out["node_other"] = ",".join(n["node_id"] for n in by_role["other"])
    out["not_alive_nodes"] = str(len(nodes) - len(alive))
    if heads:
        out["temp_dir"] = heads[0]["temp_dir"]
        out["session_dir"] = heads[0]["session_dir"]
    out["missing"] = " ".join(r for r in ROLES if not by_role.get(r))
    if args.dashboard:
        out["dashboard"] = "up" if dashboard_ok(args.dashboard) else "down"
    ok = not out["missing"] and out.get("dashboard", "up") == "up"
    return (0 if ok else 1), out


def cmd_check(args) -> int:
    deadline = time.monotonic() + args.wait
    while True:
        rc, out = check_once(args)
        if rc in (0, 3) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for key, val in out.items():
        print(f"{key}={val}")
    return rc


def cmd_nodes(args) -> int:
    if not port_open(args.address):
        print(f"no GCS answers at {args.address}")
        return 2
    nodes = sorted(
        node_list(args.address), key=lambda n: (n["state"] != "ALIVE", not n["is_head"], role_of(n))
    )
    pids = raylet_pids()
    for n in nodes:
        res = {k: v for k, v in n["resources"].items() if not k.startswith("node:")}
        for k in ("memory", "object_store_memory"):
            if k in res:
                res[k] = f"{res[k] / 2**30:.2f}GiB"
        print(
            f"{role_of(n):5} {n['state']:5} {n['node_id'][:12]} ip={n['ip']} "
            f"raylet_pid={pids.get(n['node_id'], '-')} resources={json.dumps(res, sort_keys=True)}"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check")
    p_check.add_argument("--address", default="127.0.0.1:6379")
    p_check.add_argument("--dashboard", default="")
    p_check.add_argument("--wait", type=float, default=0.0)
    p_check.set_defaults(func=cmd_check)
    p_nodes = sub.add_parser("nodes")
    p_nodes.add_argument("--address", default="127.0.0.1:6379")
    p_nodes.set_defaults(func=cmd_nodes)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
