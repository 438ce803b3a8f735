#!/bin/sh
# Entry point of the daskgmm image: runs its arguments, e.g. `dask scheduler ...`,
# `dask worker ...`, `daskgmm fit ...`, `jupyter lab ...`.
#
# distributed 2026.6 removed the old hyphenated console scripts, but the templates of the dask
# Helm chart (deploy/kubernetes/helm-values.yaml) still start the scheduler and the workers with
# them. Translate those two names to the current commands so the chart runs this image.
set -e
case "$1" in
    dask-scheduler) shift; set -- dask scheduler "$@" ;;
    dask-worker) shift; set -- dask worker "$@" ;;
esac
exec "$@"
