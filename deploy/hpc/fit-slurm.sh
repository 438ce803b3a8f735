#!/usr/bin/env bash
#SBATCH --job-name=daskgmm-fit
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=02:00:00
#SBATCH --output=daskgmm-fit-%j.out
#
# A daskgmm fit inside one SLURM allocation: starts a TLS Dask scheduler on the first node
# (it writes a scheduler file on the shared filesystem), one worker per node with srun, runs
# `daskgmm fit --scheduler-file`, and stops the cluster when the fit ends (or fails).
#
#   sbatch deploy/hpc/fit-slurm.sh /shared/pixels.zarr 8 /shared/models/pixels-k8.npz
#
# Arguments: DATA (Zarr store or .npy on the shared filesystem, the same path on every node),
# N_COMPONENTS, and MODEL (default: model-$SLURM_JOB_ID.npz here). Environment:
#   DASKGMM_TLS_DIR   certificates from deploy/tls/make_certs.py (default ~/.config/daskgmm/tls;
#                     keep it mode 0700: the keys are what lets a process join your cluster)
#   DASKGMM_RUN_DIR   where the scheduler file goes (default ./daskgmm-run-$SLURM_JOB_ID; shared)
#   DASKGMM_INTERFACE network interface for Dask traffic, e.g. ib0 (default: the host's address)
#   DASKGMM_SCHEDULER_PORT, DASKGMM_DASHBOARD_ADDRESS  default: free ports (nodes are shared);
#                     the scheduler file and the job log show the ones chosen
#   DASKGMM_FIT_ARGS  more `daskgmm fit` options, e.g. "--covariance-type diag --seed 0"
#   DASKGMM_WORKER_ARGS  more `dask worker` options, e.g. "--resources MEM=1"
# Activate the Python environment that has daskgmm (the same one on every node) before sbatch:
# SLURM passes the environment on to the job and to srun.
set -euo pipefail

usage="usage: sbatch fit-slurm.sh DATA N_COMPONENTS [MODEL]"
DATA=${1:?$usage}
K=${2:?$usage}
MODEL=${3:-model-${SLURM_JOB_ID}.npz}
TLS=${DASKGMM_TLS_DIR:-$HOME/.config/daskgmm/tls}
RUN=${DASKGMM_RUN_DIR:-$PWD/daskgmm-run-$SLURM_JOB_ID}
SCHEDULER_FILE=$RUN/scheduler.json
THREADS=${SLURM_CPUS_PER_TASK:-1}
# Dask's memory limit per worker: 90% of what SLURM grants per node (MiB), so that Dask's
# thresholds (deploy/dask/dask.yaml) act before SLURM's out-of-memory kill.
MEMORY_LIMIT=$(( ${SLURM_MEM_PER_NODE:?request memory with --mem} * 9 / 10 ))MiB
IFACE=()
if [ -n "${DASKGMM_INTERFACE:-}" ]; then IFACE=(--interface "$DASKGMM_INTERFACE"); fi
# the extra options are lists of words (split on whitespace, no glob expansion)
read -r -a WORKER_ARGS <<<"${DASKGMM_WORKER_ARGS:-}"
read -r -a FIT_ARGS <<<"${DASKGMM_FIT_ARGS:-}"

for f in ca.pem scheduler.pem scheduler-key.pem worker.pem worker-key.pem client.pem client-key.pem; do
    if [ ! -r "$TLS/$f" ]; then
        echo "error: $TLS/$f is missing; make the certificates with: python deploy/tls/make_certs.py $TLS" >&2
        exit 2
    fi
done
# TLS for every role through Dask's configuration (environment variables), read by the
# scheduler, the workers and the client alike. (The scheduler's --tls-* options cannot be
# combined with --interface; the configuration has no such restriction.)
export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
export DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$TLS/ca.pem
export DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT=$TLS/scheduler.pem
export DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY=$TLS/scheduler-key.pem
export DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT=$TLS/worker.pem
export DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY=$TLS/worker-key.pem
export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=$TLS/client.pem
export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=$TLS/client-key.pem
mkdir -p "$RUN"
rm -f "$SCHEDULER_FILE"

# Stop the cluster in order, each part with a bounded wait: the workers first, while their
# scheduler is still up, then the scheduler. Signalled together, a scheduler tells its workers
# to close at the moment they get SIGTERM, and a `dask worker` caught in both can hang in its
# own shutdown (seen with --no-nanny: the signal path cancels the close the scheduler started,
# and the cancelled close never finishes); an unbounded `wait` then held the job, idle, until
# its time limit.
stop() {  # PID: SIGTERM, up to 30 s to exit, then SIGKILL
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 300); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    stop "${WORKERS_PID:-}"  # srun passes the SIGTERM on to every worker task
    stop "${SCHEDULER_PID:-}"
}
trap cleanup EXIT

dask scheduler --protocol tls ${IFACE[@]+"${IFACE[@]}"} --scheduler-file "$SCHEDULER_FILE" \
    --port "${DASKGMM_SCHEDULER_PORT:-0}" --dashboard-address "${DASKGMM_DASHBOARD_ADDRESS:-:0}" &
SCHEDULER_PID=$!
for _ in $(seq 120); do
    [ -s "$SCHEDULER_FILE" ] && break
    kill -0 "$SCHEDULER_PID" 2>/dev/null || { echo "error: the Dask scheduler exited" >&2; exit 1; }
    sleep 1
done
[ -s "$SCHEDULER_FILE" ] || { echo "error: no scheduler file after 120 s" >&2; exit 1; }

srun --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="$THREADS" \
    dask worker --scheduler-file "$SCHEDULER_FILE" ${IFACE[@]+"${IFACE[@]}"} \
    --nthreads "$THREADS" --memory-limit "$MEMORY_LIMIT" --local-directory "${TMPDIR:-/tmp}" --death-timeout 60 ${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"} &
WORKERS_PID=$!

daskgmm fit "$DATA" --n-components "$K" --scheduler-file "$SCHEDULER_FILE" \
    --save-model "$MODEL" --json ${FIT_ARGS[@]+"${FIT_ARGS[@]}"}
