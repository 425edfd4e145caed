"""The figures of the reliability suite as a Markdown table, from the JSON files its tests write.

    python tests/reliability/summarize.py [RESULTS_DIR]

RESULTS_DIR defaults to $RUNREC_RELIABILITY_RESULTS, else tests/reliability/results/. Each
test writes one JSON object there: a "what" sentence and its numbers. docs/reliability.md
quotes this output; the test command prints it at the end of a run.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# test file -> section of docs/reliability.md, in the order the issue names them
SECTIONS = (
    ("Many writers at once", ("test_1000_runs",)),
    ("kill -9 at random moments", ("test_kill_9",)),
    (
        "Disk full",
        ("test_job_whose_store_is_full", "test_job_with_too_little", "test_writes_on_a_full"),
    ),
    (
        "Read-only, odd, moved stores; clock skew",
        (
            "test_read_only",
            "test_store_on_an_odd_path",
            "test_moved_or_copied",
            "test_skewed",
            "test_end_inferred",
        ),
    ),
    ("Cluster faults mid-write", ("test_slurm_node_fails", "test_ray_worker_crashes")),
    ("fsck", ("test_planted_problems", "test_fsck")),
    (
        "Codec, schema evolution, fuzzing",
        (
            "test_run_records",
            "test_versions_fold",
            "test_config_and_metrics",
            "test_released_v1",
            "test_unknown_future",
            "test_fields_left_out",
            "test_a_version_from_a_newer",
            "test_record_decoding_fuzz",
            "test_store_reads_run_directories",
            "test_blob_fuzz",
            "test_decompression_bombs",
            "test_expression_parser",
            "test_criteria_fuzz",
            "test_where_through",
        ),
    ),
    ("Secrets", ("test_no_secret",)),
    (
        "Safety of reading and names",
        (
            "test_reading_commands",
            "test_data_names",
            "test_hostile",
            "test_links",
            "test_planted_links",
        ),
    ),
    ("Permissions", ("test_permissions",)),
)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, ensure_ascii=False)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(v)


def summarize(results: str) -> str:
    files = sorted(f for f in os.listdir(results) if f.endswith(".json"))
    docs = {}
    for f in files:
        try:
            with open(os.path.join(results, f)) as fh:
                docs[f[:-5]] = json.load(fh)
        except (OSError, ValueError) as exc:
            docs[f[:-5]] = {"what": f"unreadable result file ({exc})"}
    used: set[str] = set()
    out = []
    for title, prefixes in (*SECTIONS, ("Other", ("",))):
        names = [n for n in docs if n not in used and n.startswith(prefixes)]
        if not names:
            continue
        used.update(names)
        out += [f"### {title}", "", "| test | what | figures |", "|---|---|---|"]
        for n in names:
            d = dict(docs[n])
            what = str(d.pop("what", "")).replace("|", "\\|").replace("\n", " ")
            figs = "; ".join(f"{k}: {_fmt(v)}" for k, v in d.items())
            figs = figs.replace("|", "\\|").replace("\n", "\\n")
            out.append(f"| `{n}` | {what} | {figs} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    results = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.environ.get("RUNREC_RELIABILITY_RESULTS", os.path.join(HERE, "results"))
    )
    if not os.path.isdir(results):
        print(f"no results in {results}: run `pytest tests/reliability` first", file=sys.stderr)
        return 1
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
