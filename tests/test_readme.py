"""Every ```python and ```bash block of README.md and deploy/README.md runs as written.

The blocks of one file run in order, each in a fresh process, in one temporary directory that
holds a copy of ``deploy/`` (so that ``python deploy/tls/make_certs.py`` works): a block reads
what an earlier block wrote (``data.zarr``, ``tile.zarr``, ...) and defines every name it uses.
``daskgmm``, ``dask`` and ``python`` are this environment's, importing this checkout.

A block that needs what a test machine does not have (the network, a remote scheduler, Docker,
Kubernetes, a batch system) is skipped by its first line, in :data:`SKIP`, with the reason and
the test that covers it instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "deploy/README.md")

#: the first line of a block -> why it does not run here
SKIP = {
    "daskgmm segment s3://bucket/tile.zarr s3://bucket/out/seg.zarr -k 6 --probabilities \\": "needs an S3 bucket and credentials; tests/test_storage.py runs the same against a moto S3 server",
    # README.md
    "python3 -m venv .venv && . .venv/bin/activate && pip install . && daskgmm demo": "creates a virtual environment and installs from the network; tests/test_cli.py runs the demo",
    'python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[test]" && pytest -m "not slow" -n 2 --dist loadfile': "creates a virtual environment, installs from the network and runs this test suite",
    "daskgmm fit store.zarr --array pixels -k 8 --scheduler tcp://scheduler:8786": "needs a scheduler at tcp://scheduler:8786; tests/test_cluster.py fits through a real one",
    "daskgmm segment scene.zarr classes.zarr -k 6 --array reflectance --feature-axis 0 --scheduler "
    "tcp://scheduler:8786": "needs a scheduler at tcp://scheduler:8786; tests/test_image.py segments through a real cluster",
    "daskgmm segment-bench /tmp/segment-bench      # defaults: 20,000 x 20,000 x 4 uint16, 5 classes": "the 3.2 GB scale run takes minutes; tests/test_image.py runs it small",
    "daskgmm segment scene.tif scene-cli.zarr -k 3 --seed 0 --nworkers 1 --overwrite": "starts a local cluster "
    "(~20 s on a loaded 2-core machine); tests/test_geo.py runs this command on a GeoTIFF through a real cluster",
    "daskgmm fit data.zarr -k 8 --scheduler tls://scheduler:8786 \\": "needs a TLS scheduler at tls://scheduler:8786; tests/test_tls.py runs that topology on 127.0.0.1",
    "dask scheduler --scheduler-file sched.json &            # or an existing scheduler": "leaves a scheduler and a worker running and names a remote scheduler; tests/test_cluster.py runs "
    "these commands",
    # deploy/README.md
    "pip install --constraint deploy/docker/constraints.txt .": "installs from the network",
    "dask scheduler --protocol tls --tls-ca-file ca.pem --tls-cert scheduler.pem --tls-key scheduler-key.pem": "starts a scheduler that runs until stopped, and names a remote host; tests/test_tls.py runs these",
    "python deploy/tls/make_certs.py deploy/docker/certs                 # once": "runs Docker Compose; tests/test_deploy.py checks the compose file and tests/test_tls.py its commands",
    "kubectl create secret generic daskgmm-tls \\": "needs a Kubernetes cluster; tests/test_deploy.py checks the manifests",
    "python deploy/tls/make_certs.py ~/.config/daskgmm/tls && chmod 700 ~/.config/daskgmm/tls": "submits SLURM/PBS jobs from a shared environment; tests/test_deploy.py checks the scripts",
    "from dask_jobqueue import SLURMCluster            # or PBSCluster": "starts SLURM jobs; tests/test_deploy.py checks the jobqueue configuration",
}

_OPEN = re.compile(r"^(\s*)```(python|bash)\s*$")
_CLOSE = re.compile(r"^\s*```\s*$")


def code_blocks(doc: str) -> list[tuple[str, int, str]]:
    """``(language, line, code)`` of every python/bash block of ``doc`` (list items dedented)."""
    out, lines = [], (ROOT / doc).read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m:
            j = i + 1
            while not _CLOSE.match(lines[j]):
                j += 1
            out.append((m.group(2), i + 1, textwrap.dedent("\n".join(lines[i + 1 : j])) + "\n"))
            i = j
        i += 1
    return out


BLOCKS = [(doc, *block) for doc in DOCS for block in code_blocks(doc)]


def _first_line(code: str) -> str:
    return code.splitlines()[0].rstrip()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One directory per test module run, shared by the blocks in order, with a copy of deploy/."""
    d = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "deploy", d / "deploy", ignore=shutil.ignore_patterns("certs", "data", "output"))
    return d


def _env() -> dict:
    bindir = os.path.dirname(sys.executable)
    path = os.pathsep.join([bindir, os.environ.get("PATH", "")])
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = dict(os.environ, PATH=path, PYTHONPATH=pythonpath, MPLBACKEND="Agg")
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def test_every_skip_names_a_block():
    firsts = {_first_line(code) for _, _, _, code in BLOCKS}
    assert not set(SKIP) - firsts, "stale SKIP entries: " + repr(set(SKIP) - firsts)
    assert len(BLOCKS) >= 25


@pytest.mark.parametrize("doc, lang, line, code", BLOCKS, ids=[f"{d}:{n}" for d, _, n, _ in BLOCKS])
def test_block_runs_as_written(doc, lang, line, code, workdir):
    reason = SKIP.get(_first_line(code))
    if reason:
        pytest.skip(reason)
    if lang == "bash" and code.lstrip().startswith("openssl") and shutil.which("openssl") is None:
        pytest.skip("no openssl here")
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
    r = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (
        f"{doc}:{line} failed:\n{code}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    )
