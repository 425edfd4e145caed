# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables below are used by the scripts that source this
# Helpers shared by slurm/build25, up25, down25 and diagnose25. Sourced, never run.
# The caller sets PROG (used in messages) before sourcing. The functions (say, die, now_us, since,
# take_lock, start_daemon, daemon_pid, stop_daemons, ...) are the 22.05 scripts' own, from
# slurm/lib.sh; only the variables they read are pointed at the 25.11 cluster here.

# shellcheck source=slurm/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=slurm/env25
. "$SLURM_SCRIPTS/env25"

PREFIX=$RUNREC_SLURM25_PREFIX
STAMP=$PREFIX/.runrec-build-stamp # holds the sha256 of the tarball the prefix was built from
WHEEL_DIR=$RUNREC_SLURM25_WHEEL_CACHE/$RUNREC_SLURM25_SHA256
state_paths "$RUNREC_SLURM25_STATE"
ETC=$STATE/etc              # slurm.conf, slurmdbd.conf, cgroup.conf, gres.conf
SLURM_CONF_FILE=$ETC/slurm.conf
NODES=(m1 m2)
# Start order; stop in reverse. munged is the 22.05 cluster's (slurm/lib.sh state): never ours.
DAEMONS=(mariadbd slurmdbd slurmctld slurmd-m1 slurmd-m2)

# Every Slurm command (and daemon) the 25.11 scripts run is the 25.11 one, reading this cluster's
# configuration; munge, MariaDB and the rest still come from the system.
export PATH="$PREFIX/bin:$PREFIX/sbin:$PATH" SLURM_CONF=$SLURM_CONF_FILE
