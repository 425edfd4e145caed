# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables below are used by the scripts that source this
# Helpers shared by slurm/up, slurm/down and slurm/diagnose. Sourced, never run.
# The caller sets PROG (used in messages) before sourcing.

SLURM_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/env
. "$SLURM_SCRIPTS/env"

# state_paths DIR: every path of a cluster's state folder (slurm/lib25.sh points them at 25.11's)
state_paths() {
    STATE=$1
    LOG_DIR=$STATE/log          # every daemon's log (NAME.log) and its stdout/stderr (NAME.out)
    PID_DIR=$STATE/pids         # our pid files, written from $! when a daemon starts
    RUN_DIR=$STATE/run          # pid files the Slurm daemons write themselves
    CTLD_SPOOL=$STATE/slurmctld # StateSaveLocation
    SLURMD_SPOOL=$STATE/slurmd  # SlurmdSpoolDir=$SLURMD_SPOOL/%n
    DB_DIR=$STATE/mariadb       # owned by mysql: data/, socket, pid file
    DB_DATA=$DB_DIR/data
    DB_SOCKET=$DB_DIR/mariadbd.sock
    DB_PASS_FILE=$STATE/slurmdb.pass
    MODE_FILE=$STATE/memory-mode
}
state_paths "$RUNREC_SLURM_STATE"
SLURM_ETC=/etc/slurm
NODES=(n1 n2)
# Start order; stop in reverse.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd-n1 slurmd-n2)

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: WARNING: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: ERROR: %s\n' "$PROG" "$*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "$PROG must run as root (it starts system daemons); rerun with sudo"
}

# Wall-clock time as microseconds, and seconds since such a time with one decimal.
now_us() {
    local t=${EPOCHREALTIME//[.,]/}
    printf '%s\n' "$((10#$t))"
}
since() {
    local d=$(($(now_us) - $1))
    printf '%d.%d\n' $((d / 1000000)) $((d % 1000000 / 100000))
}

# Serialize slurm/up and slurm/down (fd 9, closed in every daemon started).
take_lock() {
    exec 9>"$STATE/.lock"
    flock -w $((RUNREC_SLURM_TIMEOUT * 3)) 9 \
        || die "another slurm/up or slurm/down holds $STATE/.lock; wait for it, or kill it by PID"
}

# The process name (/proc/PID/comm) a daemon has once it runs.
daemon_comm() {
    case $1 in
    slurmd-*) printf 'slurmd\n' ;;
    *) printf '%s\n' "$1" ;;
    esac
}

# Print the PID of daemon $1 if its pid file names a live (not zombie) process of the right name.
daemon_pid() {
    local file=$PID_DIR/$1.pid pid stat comm state
    [[ -r $file ]] || return 1
    read -r pid <"$file" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    comm=${stat#*(}
    comm=${comm%)*}
    state=${stat##*) }
    state=${state%% *}
    [[ $comm == "$(daemon_comm "$1")" && $state != Z ]] || return 1
    printf '%s\n' "$pid"
}

daemon_alive() { daemon_pid "$1" >/dev/null; }

# Last lines of a daemon's logs, for error messages.
log_tail() {
    local f
    for f in "$LOG_DIR/$1.log" "$LOG_DIR/$1.out"; do
        if [[ -s $f ]]; then
            printf -- '--- last lines of %s ---\n' "$f"
            tail -n "${2:-15}" "$f"
        fi
    done
}

# start_daemon NAME COMMAND...: run COMMAND in the foreground of a new session, stdin from
# /dev/null, stdout and stderr appended to $LOG_DIR/NAME.out, its PID in $PID_DIR/NAME.pid.
start_daemon() {
    local name=$1 pid i
    shift
    printf '\n=== %s: started by %s: %s\n' "$(date '+%F %T')" "$PROG" "$*" >>"$LOG_DIR/$name.out"
    # Not a process-group leader here, so setsid execs in place and $! is the daemon itself.
    setsid "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$PID_DIR/$name.pid"
    # Wait until the exec chain (setsid, setpriv) has become the daemon.
    for ((i = 0; i < 50; i++)); do
        daemon_alive "$name" && return 0
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if daemon_alive "$name"; then return 0; fi
    log_tail "$name" >&2
    die "$name exited right after start (command: $*); read the log lines above, fix the cause, rerun slurm/up"
}

# wait_for SECONDS COMMAND...: poll COMMAND (quietly) until it succeeds; 1 on timeout.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# stop_daemons NAME...: SIGTERM every named daemon that runs, wait for all of them to exit,
# SIGKILL whatever is left after RUNREC_SLURM_TIMEOUT seconds. Safe when none runs.
stop_daemons() {
    local name pid deadline left
    local -a names=()
    for name in "$@"; do
        if pid=$(daemon_pid "$name"); then
            say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            names+=("$name")
        else
            rm -f "$PID_DIR/$name.pid"
        fi
    done
    ((${#names[@]})) || return 0
    deadline=$((SECONDS + RUNREC_SLURM_TIMEOUT))
    while :; do
        left=0
        for name in "${names[@]}"; do
            daemon_alive "$name" && left=1
        done
        ((left)) || break
        if ((SECONDS >= deadline)); then
            for name in "${names[@]}"; do
                if pid=$(daemon_pid "$name"); then
                    warn "$name (pid $pid) still runs ${RUNREC_SLURM_TIMEOUT}s after SIGTERM; sending SIGKILL"
                    kill -KILL "$pid" 2>/dev/null || true
                fi
            done
            deadline=$((SECONDS + 10))
            sleep 0.5
            for name in "${names[@]}"; do
                if pid=$(daemon_pid "$name"); then
                    die "$name (pid $pid) survived SIGKILL; inspect it with 'ps -o pid,stat,cmd -p $pid'"
                fi
            done
            break
        fi
        sleep 0.2
    done
    for name in "${names[@]}"; do
        rm -f "$PID_DIR/$name.pid"
    done
}
