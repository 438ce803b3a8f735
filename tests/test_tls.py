"""The Docker Compose topology, run for real on 127.0.0.1 with TLS.

The scheduler, the two workers, the data maker and the fit job run the very commands of
``deploy/docker/compose.yaml`` (as subprocesses of this interpreter), with the container paths
``/certs``, ``/data``, ``/output`` mapped to temporary directories and ``deploy/dask/dask.yaml``
as the Dask configuration. Certificates come fresh from ``deploy/tls/make_certs.py``.
Then: clients without the cluster's certificates are refused, by the CLI before connecting
and by the scheduler at the TLS handshake.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def make_certs(outdir: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "tls" / "make_certs.py"),
            str(outdir),
            "--hosts",
            "localhost,127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )


def local_command(argv: list[str], dirs: dict[str, Path], scheduler: str | None = None) -> list[str]:
    """A compose ``command`` as it runs here: same program and options, local paths."""
    head = {
        "dask": [sys.executable, "-m", "dask"],
        "daskgmm": [sys.executable, "-m", "daskgmm.cli"],
        "python": [sys.executable],
    }[argv[0]]
    out = []
    for a in argv[1:]:
        for container, local in dirs.items():
            a = a.replace(container, str(local))
        if scheduler is not None:
            a = a.replace("tls://scheduler:8786", scheduler)
        out.append(a)
    return head + out


def small_npy(directory: Path) -> str:
    path = directory / "small.npy"
    np.save(path, np.random.RandomState(0).standard_normal((20, 2)))
    return str(path)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested configuration -> dotted keys (dask.config.set replaces whole sub-trees otherwise)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def wait_for(predicate, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """The compose scheduler + worker-1 + worker-2 on 127.0.0.1; yields a dict of paths/addresses."""
    tmp = tmp_path_factory.mktemp("tls")
    dirs = {
        "/certs": tmp / "certs",
        "/data": tmp / "data",
        "/output": tmp / "output",
        "/tmp/dask": tmp / "spill",
    }
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    make_certs(dirs["/certs"])
    conf = tmp / "dask-config"
    conf.mkdir()
    # deploy/dask/dask.yaml with the certificate directory where this test mounted it
    (conf / "dask.yaml").write_text(
        (DEPLOY / "dask" / "dask.yaml").read_text().replace("/certs/", f"{dirs['/certs']}/")
    )
    env = {**os.environ, "DASK_CONFIG": str(conf), "PYTHONUNBUFFERED": "1"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)

    procs: list[subprocess.Popen] = []
    logs = {}

    def start(name, argv):
        logs[name] = tmp / f"{name}.log"
        f = open(logs[name], "wb")
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        f.close()
        procs.append(p)
        return p

    try:
        sched_argv = local_command(SERVICES["scheduler"]["command"], dirs)
        # a free port instead of 8786, the dashboard on loopback, the address via a scheduler file
        sched_argv[sched_argv.index("--port") + 1] = "0"
        sched_argv[sched_argv.index("--dashboard-address") + 1] = "127.0.0.1:0"
        sched_file = tmp / "scheduler.json"
        sched = start("scheduler", sched_argv + ["--host", "127.0.0.1", "--scheduler-file", str(sched_file)])

        def scheduler_address():
            try:
                return json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):  # not there yet, or still being written
                return None

        wait_for(lambda: scheduler_address() or sched.poll() is not None, 60, "the scheduler file")
        assert sched.poll() is None, logs["scheduler"].read_text()
        address = scheduler_address()
        assert address.startswith("tls://127.0.0.1:")
        for name in ("worker-1", "worker-2"):
            start(name, local_command(SERVICES[name]["command"], dirs, address) + ["--host", "127.0.0.1"])
        yield {"address": address, "dirs": dirs, "env": env, "logs": logs, "conf": conf}
    finally:
        # each process leads its own session: its group holds the nanny's worker too
        def signal_group(p, sig):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass

        for p in reversed(procs):
            signal_group(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                signal_group(p, signal.SIGKILL)
                p.wait()


def certs(cluster, role):
    d = cluster["dirs"]["/certs"]
    return {
        "tls_ca_file": str(d / "ca.pem"),
        f"tls_{role}_cert": str(d / f"{role}.pem"),
        f"tls_{role}_key": str(d / f"{role}-key.pem"),
    }


def test_compose_job_fits_through_the_tls_cluster(tls_cluster):
    dirs, env = tls_cluster["dirs"], tls_cluster["env"]
    # the make-data service's Python code, run here in-process (the fit below is the real CLI)
    argv = SERVICES["make-data"]["command"]
    assert argv[:2] == ["python", "-c"]
    import dask

    with dask.config.set(scheduler="threads"):  # as in the container: no cluster involved
        exec(argv[2].replace("/data/", f"{dirs['/data']}/"), {})
    fit = subprocess.run(
        local_command(SERVICES["fit"]["command"], dirs, tls_cluster["address"]),
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    summary = json.loads(fit.stdout.strip().splitlines()[-1])
    assert summary["converged"]

    import daskgmm

    model = daskgmm.load(dirs["/output"] / "model.npz")
    assert model.n_components == 5
    np.testing.assert_allclose(model.means_, np.round(np.asarray(summary["means"]), 6), atol=1e-6)
    # write_blobs_zarr(seed=0) draws the 5 true means as uniform(-3, 3) in 8-D: each is recovered
    true_means = np.random.RandomState(0).uniform(-3, 3, size=(5, 8))
    d = np.linalg.norm(model.means_[:, None, :] - true_means[None], axis=2)
    assert sorted(d.argmin(axis=0)) == list(range(5))  # one fitted component per true one
    assert d.min(axis=0).max() < 0.1

    # the work ran on the two TLS workers of the compose file
    sched_log = tls_cluster["logs"]["scheduler"].read_text()
    assert sched_log.count("Register worker addr: tls://127.0.0.1:") >= 2
    assert "Receive client connection" in sched_log


def test_workers_have_the_compose_limits(tls_cluster):
    from distributed import Client
    from distributed.security import Security

    with Client(
        tls_cluster["address"],
        security=Security(**certs(tls_cluster, "client"), require_encryption=True),
        timeout="30s",
    ) as c:
        c.wait_for_workers(2, timeout=60)
        workers = {w["name"]: w for w in c.scheduler_info(n_workers=-1)["workers"].values()}
    assert sorted(workers) == ["worker-1", "worker-2"]
    for w in workers.values():
        assert w["nthreads"] == 2
        assert w["memory_limit"] == 3 * 2**30  # --memory-limit 3GiB


def test_cli_refuses_tls_scheduler_without_certificates(tls_cluster, monkeypatch):
    """Without certificates (flags or configuration) the CLI says what to pass, before connecting."""
    from daskgmm.cli import main

    argv = local_command(SERVICES["fit"]["command"], tls_cluster["dirs"], tls_cluster["address"])[3:]
    i = argv.index("--tls-ca-file")
    no_certs = argv[:i] + argv[i + 6 :]
    no_certs[no_certs.index("fit") + 1] = small_npy(tls_cluster["dirs"]["/output"])
    monkeypatch.delenv("DASK_CONFIG", raising=False)
    with pytest.raises(
        SystemExit, match=r"requires TLS, and no certificates were given\. Pass --tls-ca-file"
    ):
        main(no_certs)


@pytest.mark.parametrize(
    "given, message",
    [
        (
            ["--tls-ca-file"],
            r"TLS needs all of --tls-ca-file, --tls-cert and --tls-key; missing --tls-cert, --tls-key",
        ),
        (["--tls-cert", "--tls-key"], r"missing --tls-ca-file"),
    ],
)
def test_cli_refuses_part_of_the_certificates(tmp_path, given, message):
    from daskgmm.cli import main

    pem = tmp_path / "x.pem"
    pem.write_text("not used")
    flags = [x for g in given for x in (g, str(pem))]
    with pytest.raises(SystemExit, match=message):
        main(["fit", small_npy(tmp_path), "-k", "2", "--scheduler", "tls://127.0.0.1:1", *flags])


def test_cli_refuses_certificates_for_a_non_tls_address(tmp_path):
    from daskgmm.cli import main

    make_certs(tmp_path)
    flags = [
        "--tls-ca-file",
        str(tmp_path / "ca.pem"),
        "--tls-cert",
        str(tmp_path / "client.pem"),
        "--tls-key",
        str(tmp_path / "client-key.pem"),
    ]
    with pytest.raises(SystemExit, match=r"scheduler address 'tcp://127\.0\.0\.1:1' is not tls://"):
        main(["fit", small_npy(tmp_path), "-k", "2", "--scheduler", "tcp://127.0.0.1:1", *flags])
    with pytest.raises(SystemExit, match=r"are for connecting to a running tls:// scheduler"):
        main(["fit", small_npy(tmp_path), "-k", "2", *flags])


def test_scheduler_refuses_clients_without_the_cluster_certificates(tls_cluster, tmp_path):
    from distributed import Client
    from distributed.security import Security

    address = tls_cluster["address"]
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    log = tls_cluster["logs"]["scheduler"]
    refused_before = log.read_text().count("TLS handshake failed")

    # 1. plain TCP to the TLS port
    with pytest.raises(OSError):
        Client(f"tcp://{host}:{port}", timeout="5s")

    # 2. TLS that trusts the cluster's CA but presents no client certificate
    ctx = ssl.create_default_context(cafile=str(tls_cluster["dirs"]["/certs"] / "ca.pem"))
    ctx.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ctx.wrap_socket(raw) as s:  # TLS 1.3: the refusal arrives with the first read
                s.sendall(b"\x00" * 8)
                if s.recv(1) == b"":
                    raise ConnectionResetError("closed by the scheduler")

    # 3. certificates from another CA (somebody else's cluster)
    other = tmp_path / "other"
    make_certs(other)
    sec = Security(
        tls_ca_file=str(other / "ca.pem"),
        tls_client_cert=str(other / "client.pem"),
        tls_client_key=str(other / "client-key.pem"),
        require_encryption=True,
    )
    with pytest.raises(OSError):
        Client(address, security=sec, timeout="5s")

    wait_for(
        lambda: log.read_text().count("TLS handshake failed") >= refused_before + 3,
        10,
        "the scheduler's refusals",
    )


def test_cli_connects_with_tls_from_the_dask_configuration(tls_cluster):
    """The notebook / HPC route: no --tls-* options, certificates from deploy/dask/dask.yaml."""
    import dask

    from daskgmm.cli import build_parser
    from daskgmm.cli._cluster import connect

    cfg = flatten(yaml.safe_load((tls_cluster["conf"] / "dask.yaml").read_text()))
    args = build_parser().parse_args(["fit", "x.zarr", "-k", "2", "--scheduler", tls_cluster["address"]])
    with dask.config.set(cfg):
        with connect(args) as client:
            client.wait_for_workers(2, timeout=60)
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6


def test_pem_text_in_the_configuration_connects(tls_cluster):
    """The Helm route: the certificates' PEM text itself (from a Secret) as the configuration."""
    import dask
    from distributed import Client

    d = tls_cluster["dirs"]["/certs"]
    pem = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": (d / "ca.pem").read_text(),
        "distributed.comm.tls.client.cert": (d / "client.pem").read_text(),
        "distributed.comm.tls.client.key": (d / "client-key.pem").read_text(),
    }
    assert all("-----BEGIN" in v for k, v in pem.items() if k != "distributed.comm.require-encryption")
    with dask.config.set(pem), Client(tls_cluster["address"], timeout="30s") as c:
        assert len(c.scheduler_info(n_workers=-1)["workers"]) == 2


def test_make_certs_signs_every_role_and_protects_keys(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    make_certs(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for role in ("scheduler", "worker", "client"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{role}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
        # every Dask process both listens and connects: the certificate serves both ends
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
        ctx.load_cert_chain(str(tmp_path / f"{role}.pem"), str(tmp_path / f"{role}-key.pem"))  # key matches
        assert (tmp_path / f"{role}-key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    before = (tmp_path / "ca.pem").read_bytes()
    r = subprocess.run(
        [sys.executable, str(DEPLOY / "tls" / "make_certs.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode != 0 and "already holds" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "ca.pem").read_bytes() == before  # nothing replaced


@pytest.mark.parametrize("content", ["", "[]", '{"type": "Scheduler"}'])
def test_cli_refuses_a_scheduler_file_without_an_address(tmp_path, content):
    from daskgmm.cli import main

    sched_file = tmp_path / "scheduler.json"
    sched_file.write_text(content)
    with pytest.raises(SystemExit, match=r"holds no scheduler address \(it is empty, or not the JSON"):
        main(["fit", small_npy(tmp_path), "-k", "2", "--scheduler-file", str(sched_file)])
