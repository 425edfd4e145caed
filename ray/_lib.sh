# Shared settings and helpers for ray/up, ray/down and ray/diagnose. Sourced, not run.
# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it

# Every Ray process we start (and every client that sources this) runs without token auth and
# without usage stats: a local ray.init() with auth on writes ~/.ray/auth_token, after which
# a second node fails to join with InvalidAuthToken.
export RAY_AUTH_MODE=disabled
export RAY_USAGE_STATS_ENABLED=0

RAY_HOST=127.0.0.1
RAY_GCS_PORT=6379
RAY_DASHBOARD_PORT=8265
RAY_ADDR="$RAY_HOST:$RAY_GCS_PORT"
RAY_DASHBOARD_URL="http://$RAY_HOST:$RAY_DASHBOARD_PORT"

# Ray's temp/session root. Unix socket paths must stay under 108 bytes, and Ray puts them at
# <temp>/session_<date>_<time>_<usec>_<pid>/sockets/<name>, <name> up to 16 bytes
# (dash_MetricsHead, plasma_store.2): up to 68 bytes after <temp> with a 7-digit pid. Too long
# a path fails some sockets only (the dashboard modules), so the root is kept to 36 bytes.
RAY_TEMP="${RUNREC_RAY_TEMP:-/tmp/ray}"
RAY_TEMP_MAX_LEN=36
RUNREC_DIR="$RAY_TEMP/runrec"          # our own files: start logs, cluster.env
CLUSTER_ENV="$RUNREC_DIR/cluster.env"

_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROBE="$_lib_dir/_probe.py"

_prog="ray/$(basename "$0")"
log() { printf '%s: %s\n' "$_prog" "$*" >&2; } # progress goes to stderr
warn() { printf '%s: warning: %s\n' "$_prog" "$*" >&2; }
# die WHAT-FAILED [WHAT-TO-DO]
die() {
    printf '%s: error: %s\n' "$_prog" "$1" >&2
    if [[ $# -gt 1 ]]; then printf '%s:   fix: %s\n' "$_prog" "$2" >&2; fi
    exit 1
}

check_temp_dir() {
    [[ $RAY_TEMP == /* ]] || die "RUNREC_RAY_TEMP=$RAY_TEMP is not an absolute path" \
        "use an absolute path such as /tmp/ray-runrec"
    local n=${#RAY_TEMP}
    ((n <= RAY_TEMP_MAX_LEN)) || die "RUNREC_RAY_TEMP=$RAY_TEMP is $n bytes; Ray's unix socket paths would pass the 107-byte limit" \
        "use a path of at most $RAY_TEMP_MAX_LEN bytes, such as /tmp/ray-\$USER"
    [[ $RAY_TEMP != *[[:space:]]* ]] || die "RUNREC_RAY_TEMP must not contain whitespace"
}

# Sets RAY to the ray CLI: $RAY_BIN, else the `ray` next to $PYTHON, else `ray` on PATH.
resolve_ray() {
    local cand py
    if [[ -n ${RAY_BIN:-} ]]; then
        cand=$RAY_BIN
        [[ $cand == */* ]] || cand=$(command -v "$cand" || true)
        [[ -n $cand && -x $cand ]] || die "RAY_BIN=$RAY_BIN is not an executable" \
            "point RAY_BIN at the ray CLI of an environment with ray[default] installed"
        RAY=$cand
        return 0
    fi
    if [[ -n ${PYTHON:-} ]]; then
        py=$PYTHON
        [[ $py == */* ]] || py=$(command -v "$py" || true)
        # No symlink resolution: a venv's bin/python links to the base interpreter.
        if [[ -n $py && -x "$(dirname "$py")/ray" ]]; then
            RAY="$(dirname "$py")/ray"
            return 0
        fi
    fi
    if cand=$(command -v ray); then
        RAY=$cand
        return 0
    fi
    die "cannot find the ray CLI (RAY_BIN unset, no ray next to \$PYTHON, none on PATH)" \
        "set RAY_BIN=/path/to/venv/bin/ray or PYTHON=/path/to/venv/bin/python (needs ray[default])"
}

# Sets PY to a Python that imports the same Ray as $RAY: the interpreter in the CLI's
# shebang, else $PYTHON, else the python next to the CLI, else python3.
resolve_python() {
    local line interp cand
    local -a parts cands=()
    if IFS= read -r line <"$RAY" 2>/dev/null && [[ $line == '#!'* ]]; then
        interp=${line#\#!}
        read -r -a parts <<<"$interp"
        if [[ ${#parts[@]} -gt 0 ]]; then
            if [[ ${parts[0]##*/} == env && ${#parts[@]} -gt 1 && ${parts[1]} == python* ]]; then
                cands+=("$(command -v "${parts[1]}" || true)")
            elif [[ ${parts[0]##*/} == python* ]]; then
                cands+=("${parts[0]}")
            fi
        fi
    fi
    [[ -z ${PYTHON:-} ]] || cands+=("$(command -v "$PYTHON" || true)")
    cands+=("$(dirname "$RAY")/python3" "$(dirname "$RAY")/python" "$(command -v python3 || true)")
    for cand in "${cands[@]}"; do
        if [[ -n $cand && -x $cand ]]; then
            PY=$cand
            return 0
        fi
    done
    die "cannot find a Python for $RAY" "set PYTHON=/path/to/venv/bin/python"
}

probe() { "$PY" "$PROBE" "$@"; }

# Reads `key=value` lines (from _probe.py check) into the associative array PROBE_OUT.
declare -A PROBE_OUT=()
read_probe_output() {
    local key val
    PROBE_OUT=()
    while IFS='=' read -r key val; do
        if [[ -n $key ]]; then PROBE_OUT[$key]=$val; fi
    done <<<"$1"
}

# PIDs of raylet and gcs_server processes on this host (any cluster), space separated.
ray_daemon_pids() {
    { pgrep -x raylet || true; pgrep -x gcs_server || true; } | tr '\n' ' ' | sed 's/ *$//'
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/$RAY_HOST/$1") 2>/dev/null; }
gcs_port_open() { port_in_use "$RAY_GCS_PORT"; }
