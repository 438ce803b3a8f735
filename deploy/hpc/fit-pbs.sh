#!/usr/bin/env bash
#PBS -N daskgmm-fit
#PBS -l select=3:ncpus=16:mem=64gb
#PBS -l walltime=02:00:00
#PBS -j oe
#
# A daskgmm fit inside one PBS job: starts a TLS Dask scheduler on the first node (it writes a
# scheduler file on the shared filesystem), one worker on each node of the job, runs
# `daskgmm fit --scheduler-file`, and stops the cluster when the fit ends (or fails).
#
#   qsub -v DATA=/shared/pixels.zarr,K=8,MODEL=/shared/models/pixels-k8.npz deploy/hpc/fit-pbs.sh
#
# Variables: DATA, K (N_COMPONENTS), MODEL (default: model-$PBS_JOBID.npz in the submit
# directory), and as in fit-slurm.sh DASKGMM_TLS_DIR, DASKGMM_RUN_DIR, DASKGMM_INTERFACE,
# DASKGMM_SCHEDULER_PORT, DASKGMM_DASHBOARD_ADDRESS, DASKGMM_FIT_ARGS, DASKGMM_WORKER_ARGS;
# DASKGMM_MEMORY_LIMIT is Dask's memory limit per worker (default 58GiB: a margin below
# mem=64gb above). Workers are started with pbs_tmrsh (PBS Pro; PBS tracks and
# cleans them up) where it exists, else ssh; DASKGMM_RSH overrides.
set -euo pipefail
cd "${PBS_O_WORKDIR:-$PWD}"

usage="usage: qsub -v DATA=...,K=...[,MODEL=...] fit-pbs.sh"
DATA=${DATA:?$usage}
K=${K:?$usage}
MODEL=${MODEL:-model-${PBS_JOBID}.npz}
TLS=${DASKGMM_TLS_DIR:-$HOME/.config/daskgmm/tls}
RUN=${DASKGMM_RUN_DIR:-$PWD/daskgmm-run-$PBS_JOBID}
SCHEDULER_FILE=$RUN/scheduler.json
THREADS=${NCPUS:-1}
MEMORY_LIMIT=${DASKGMM_MEMORY_LIMIT:-58GiB}
RSH=${DASKGMM_RSH:-$(command -v pbs_tmrsh || echo ssh)}
IFACE=()
if [ -n "${DASKGMM_INTERFACE:-}" ]; then IFACE=(--interface "$DASKGMM_INTERFACE"); fi
# the extra options are lists of words (split on whitespace, no glob expansion)
read -r -a WORKER_ARGS <<<"${DASKGMM_WORKER_ARGS:-}"
read -r -a FIT_ARGS <<<"${DASKGMM_FIT_ARGS:-}"
DASK=$(command -v dask)   # absolute path: remote shells do not inherit PATH

for f in ca.pem scheduler.pem scheduler-key.pem worker.pem worker-key.pem client.pem client-key.pem; do
    if [ ! -r "$TLS/$f" ]; then
        echo "error: $TLS/$f is missing; make the certificates with: python deploy/tls/make_certs.py $TLS" >&2
        exit 2
    fi
done
# TLS for every role through Dask's configuration (environment variables), read by the
# scheduler, the workers and the client alike. (The scheduler's --tls-* options cannot be
# combined with --interface; the configuration has no such restriction.) Remote shells do not
# pass the environment on, so the workers get the same settings through `env`.
TLS_ENV=(
    DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$TLS/ca.pem"
    "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT=$TLS/scheduler.pem"
    "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY=$TLS/scheduler-key.pem"
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT=$TLS/worker.pem"
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY=$TLS/worker-key.pem"
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=$TLS/client.pem"
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=$TLS/client-key.pem"
)
export "${TLS_ENV[@]}"
mkdir -p "$RUN"
rm -f "$SCHEDULER_FILE"

WORKER_PIDS=()
# Stop the cluster in order, each part with a bounded wait: the workers first, while their
# scheduler is still up, then the scheduler. Signalled together, a scheduler tells its workers
# to close at the moment they get SIGTERM, and a `dask worker` caught in both can hang in its
# own shutdown (seen with --no-nanny); an unbounded `wait` then held the job until its time limit.
stop() {  # PID...: SIGTERM, up to 30 s for all of them to exit, then SIGKILL
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 300); do
        local alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
    wait "$@" 2>/dev/null || true
}
cleanup() {
    stop ${WORKER_PIDS[@]+"${WORKER_PIDS[@]}"}
    stop ${SCHEDULER_PID:-}
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

NODEFILE=${PBS_NODEFILE:?not inside a PBS job}
while read -r host; do
    [ -n "$host" ] || continue
    # stdin from /dev/null: ssh would otherwise read the rest of the host list
    "$RSH" "$host" </dev/null env "${TLS_ENV[@]}" "$DASK" worker --scheduler-file "$SCHEDULER_FILE" ${IFACE[@]+"${IFACE[@]}"} \
        --nthreads "$THREADS" --memory-limit "$MEMORY_LIMIT" --local-directory "${TMPDIR:-/tmp}" --death-timeout 60 ${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"} &
    WORKER_PIDS+=($!)
done < <(sort -u "$NODEFILE")

daskgmm fit "$DATA" --n-components "$K" --scheduler-file "$SCHEDULER_FILE" \
    --save-model "$MODEL" --json ${FIT_ARGS[@]+"${FIT_ARGS[@]}"}
