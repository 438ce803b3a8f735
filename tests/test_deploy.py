"""deploy/: what can be checked without Docker, Kubernetes or a batch scheduler.

Every YAML file parses; the compose file, the operator manifests and the Helm values run the
image of this package's version with commands that the installed ``dask``/``daskgmm`` accept;
no removed command names; Kubernetes objects have the kinds and fields their schemas require;
the Dask configuration only uses keys distributed knows; dask-jobqueue builds job scripts from
our configuration; the batch scripts are valid bash whose ``daskgmm fit`` line parses, and the
SLURM one runs a real fit here with a stand-in ``srun``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PYPROJECT = (ROOT / "pyproject.toml").read_text()
VERSION = re.search(r'^version = "([^"]+)"', PYPROJECT, re.M).group(1)
IMAGE = f"daskgmm:{VERSION}"
REMOVED = re.compile(r"(?<![\w/.-])dask-(scheduler|worker)(?![\w.-])")  # console scripts gone in 2026.6
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
CERT_FILES = {
    "ca.pem",
    "scheduler.pem",
    "scheduler-key.pem",
    "worker.pem",
    "worker-key.pem",
    "client.pem",
    "client-key.pem",
}


def load(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def check_command(argv: list[str]) -> str:
    """Parse a container/CLI command with the real parsers; return which program it runs.

    Certificate paths exist only inside the containers; click checks that they exist, so they
    stand in as os.devnull here.
    """
    argv = [os.devnull if a.startswith("/certs/") else a for a in argv]
    if argv[:2] == ["dask", "scheduler"] or argv[:2] == ["dask", "worker"]:
        if argv[1] == "scheduler":
            from distributed.cli.dask_scheduler import main
        else:
            from distributed.cli.dask_worker import main
        main.make_context(f"dask {argv[1]}", list(argv[2:]))  # raises on an unknown option
        return f"dask {argv[1]}"
    if argv[0] == "daskgmm":
        from daskgmm.cli import build_parser

        args = build_parser().parse_args(argv[1:])  # SystemExit on an unknown option
        return f"daskgmm {args.command}"
    return argv[0]


# ---------------------------------------------------------------------------
# every file
# ---------------------------------------------------------------------------
def test_every_yaml_file_parses():
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {
        "dask/dask.yaml",
        "docker/compose.yaml",
        "kubernetes/daskcluster.yaml",
        "kubernetes/daskjob.yaml",
        "kubernetes/helm-values.yaml",
        "hpc/jobqueue.yaml",
    } <= names
    for p in YAML_FILES:
        assert load(p), p


def test_no_removed_command_names():
    # The image's entry point translates them for the Helm chart, and the README explains
    # that; nothing else may use them.
    allowed = {DEPLOY / "docker" / "entrypoint.sh", DEPLOY / "README.md"}
    offenders = []
    for p in sorted(DEPLOY.rglob("*")):
        if p.is_file() and p not in allowed and p.suffix not in (".pyc",):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if REMOVED.search(line):
                    offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_no_secrets_or_generated_material_committed():
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    files = tracked.stdout.split()
    assert not [f for f in files if f.endswith((".pem", ".key", ".crt", ".npz"))]
    for f in files:
        text = (ROOT / f).read_text()
        assert "PRIVATE KEY-----" not in text, f
        assert not re.search(r"(?i)(token|password)\s*[:=]\s*['\"]?\w{8,}", text), f
    # where the README tells people to put certificates is ignored by git
    ignored = subprocess.run(
        [
            "git",
            "check-ignore",
            "deploy/docker/certs/ca.pem",
            "deploy/docker/data/x",
            "deploy/docker/output/model.npz",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert len(ignored.stdout.split()) == 3


# ---------------------------------------------------------------------------
# docker
# ---------------------------------------------------------------------------
def test_dockerfile_installs_this_checkout_with_pinned_dask():
    from packaging.requirements import Requirement

    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r"^COPY \. /src$", text, re.M)
    assert re.search(r"pip install --constraint \S+constraints.txt /src", text)
    assert 'ENTRYPOINT ["/usr/local/bin/daskgmm-entrypoint"]' in text
    assert "COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/daskgmm-entrypoint" in text
    assert re.search(r"^USER dask$", text, re.M)  # not root
    assert not re.search(r"(?i)^(ARG|ENV)\s+\S*(PASSWORD|TOKEN|SECRET)", text, re.M)

    pins = {}
    for line in (DEPLOY / "docker" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    assert pins["dask"] == pins["distributed"]  # one release for client, scheduler and workers
    # the pins satisfy what the package itself requires
    deps = re.search(r"^dependencies = \[(.*?)^\]", PYPROJECT, re.M | re.S).group(1)
    for spec in re.findall(r'"([^"]+)"', deps):
        req = Requirement(spec)
        if req.name in pins:
            assert req.specifier.contains(pins[req.name]), (spec, pins[req.name])
    for name in ("dask", "distributed", "numpy", "cloudpickle", "msgpack", "toolz", "tornado"):
        assert name in pins


def test_dockerignore_keeps_keys_out_of_the_image():
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    for pattern in ("**/certs", "**/*.pem", "**/*.key", ".git", "deploy/docker/data", "deploy/docker/output"):
        assert pattern in ignore


@pytest.mark.parametrize(
    "old, new, expect",
    [
        ("dask-worker", "worker", "Launch a Dask worker"),
        ("dask-scheduler", "scheduler", "Launch a Dask scheduler"),
    ],
)
def test_entrypoint_translates_the_helm_charts_commands(old, new, expect):
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    scripts = sysconfig.get_path("scripts")
    if not os.path.exists(os.path.join(scripts, "dask")):
        pytest.skip("the dask console script is not installed beside this interpreter")
    env = {**os.environ, "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}
    r = subprocess.run(
        [sh, str(DEPLOY / "docker" / "entrypoint.sh"), old, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout
    assert f"Usage: dask {new}" in r.stdout


def test_compose_services_run_the_package_image_with_valid_commands():
    compose = load(DEPLOY / "docker" / "compose.yaml")[0]
    services = compose["services"]
    assert {"scheduler", "worker-1", "worker-2", "notebook", "fit"} <= set(services)
    build = services["scheduler"]["build"]
    assert (DEPLOY / "docker" / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).exists()

    programs = {}
    for name, svc in services.items():
        assert svc["image"] == IMAGE, name
        programs[name] = check_command(svc["command"])
    assert programs["scheduler"] == "dask scheduler"
    assert programs["worker-1"] == programs["worker-2"] == "dask worker"
    assert programs["fit"] == "daskgmm fit"
    assert programs["notebook"] == "jupyter"

    def opt(argv, flag):
        return argv[argv.index(flag) + 1]

    sched = services["scheduler"]["command"]
    assert opt(sched, "--protocol") == "tls"
    port = opt(sched, "--port")
    for name in ("worker-1", "worker-2"):
        w = services[name]
        assert w["command"][2] == f"tls://scheduler:{port}"
        # two workers with memory limits; the container's is above Dask's
        from dask.utils import parse_bytes

        assert parse_bytes(opt(w["command"], "--memory-limit")) < parse_bytes(
            w["mem_limit"].replace("m", "MiB")
        )
        assert opt(w["command"], "--tls-cert") == "/certs/worker.pem"
    assert opt(services["fit"]["command"], "--scheduler") == f"tls://scheduler:{port}"
    assert opt(services["fit"]["command"], "--tls-cert") == "/certs/client.pem"
    assert services["notebook"]["environment"]["DASK_SCHEDULER_ADDRESS"] == f"tls://scheduler:{port}"

    # the fit reads the store at a path the workers see too, and writes to a mounted output
    fit = services["fit"]
    data = fit["command"][2]
    mounts = {name: {v.split(":")[1]: v for v in svc.get("volumes", [])} for name, svc in services.items()}
    for name in ("worker-1", "worker-2", "fit"):
        assert "/data" in mounts[name] and data.startswith("/data/")
        assert mounts[name]["/certs"].endswith(":ro")
    assert opt(fit["command"], "--save-model").startswith("/output/") and "/output" in mounts["fit"]
    # published ports stay on the host's loopback; no login token written down
    for svc in services.values():
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:")
    assert not any("token" in a.lower() for a in services["notebook"]["command"])


def test_compose_hands_root_owned_bind_mounts_to_the_image_user():
    # Docker creates a missing ./data or ./output owned by root; the image runs as uid 1000
    services = load(DEPLOY / "docker" / "compose.yaml")[0]["services"]
    init = services["volumes-init"]
    assert init["user"] == "0:0" and init["command"][:2] == ["sh", "-c"]
    assert "useradd --create-home --uid 1000 dask" in (DEPLOY / "docker" / "Dockerfile").read_text()
    script = init["command"][2].replace("$$", "$")  # compose's escape of a literal $
    assert "chown 1000:1000" in script and "error:" in script
    r = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    init_mounts = {v.rsplit(":", 1)[0] if v.count(":") > 1 else v for v in init["volumes"]}
    for name, svc in services.items():
        writable = [
            v
            for v in svc.get("volumes", [])
            if v.startswith(("./data:", "./output:")) and not v.endswith(":ro")
        ]
        if writable and name != "volumes-init":
            assert set(writable) <= init_mounts, name
            assert svc["depends_on"]["volumes-init"]["condition"] == "service_completed_successfully", name


# ---------------------------------------------------------------------------
# kubernetes
# ---------------------------------------------------------------------------
def containers_of(pod_spec):
    return pod_spec["containers"]


def check_pod(pod_spec, where):
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for c in containers_of(pod_spec):
        assert c["name"] and c["image"] == IMAGE, where
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (where, m)
    for v in volumes.values():
        if "secret" in v:
            keys = {i["key"] for i in v["secret"]["items"]}
            assert keys <= CERT_FILES, (where, keys)  # never the CA key
    assert pod_spec["securityContext"]["runAsNonRoot"] is True


def check_cluster_spec(spec, cluster_name, where):
    assert set(spec) >= {"scheduler", "worker"}
    sched, worker = spec["scheduler"], spec["worker"]
    assert set(sched) >= {"spec", "service"}  # required by the DaskScheduler schema
    assert isinstance(worker["replicas"], int) and worker["replicas"] >= 1
    for part in (sched["spec"], worker["spec"]):
        check_pod(part, where)
    (sc,) = containers_of(sched["spec"])
    assert check_command(sc["args"]) == "dask scheduler"
    assert sc["args"][sc["args"].index("--protocol") + 1] == "tls"
    port = int(sc["args"][sc["args"].index("--port") + 1])
    named = {p["name"]: p["containerPort"] for p in sc["ports"]}
    svc = sched["service"]
    assert svc["selector"]["dask.org/cluster-name"] == cluster_name
    for p in svc["ports"]:
        assert p["targetPort"] in named
    assert any(p["port"] == port and named[p["targetPort"]] == port for p in svc["ports"])
    (wc,) = containers_of(worker["spec"])
    assert check_command(wc["args"]) == "dask worker"
    address = f"tls://{cluster_name}-scheduler:{port}"
    assert wc["args"][2] == address
    return address


def test_daskjob_manifest():
    (job,) = load(DEPLOY / "kubernetes" / "daskjob.yaml")
    assert job["apiVersion"] == "kubernetes.dask.org/v1" and job["kind"] == "DaskJob"
    assert set(job["spec"]) == {"job", "cluster"}
    name = job["metadata"]["name"]
    address = check_cluster_spec(job["spec"]["cluster"]["spec"], name, "DaskJob.cluster")
    pod = job["spec"]["job"]["spec"]
    check_pod(pod, "DaskJob.job")
    (c,) = containers_of(pod)
    assert check_command(c["args"]) == "daskgmm fit"
    assert c["args"][c["args"].index("--scheduler") + 1] == address


def test_daskcluster_manifest_and_its_fit_job():
    cluster, batch = load(DEPLOY / "kubernetes" / "daskcluster.yaml")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1" and cluster["kind"] == "DaskCluster"
    address = check_cluster_spec(cluster["spec"], cluster["metadata"]["name"], "DaskCluster")
    assert batch["apiVersion"] == "batch/v1" and batch["kind"] == "Job"
    pod = batch["spec"]["template"]["spec"]
    check_pod(pod, "Job")
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    (c,) = containers_of(pod)
    assert check_command(c["args"]) == "daskgmm fit"
    assert c["args"][c["args"].index("--scheduler") + 1] == address


# Value keys of the dask Helm chart (helm.dask.org, chart "dask", values.yaml) used here.
HELM_KEYS = {
    "scheduler": {"image", "serviceType", "servicePort", "extraArgs", "env", "resources", "securityContext"},
    "worker": {
        "image",
        "replicas",
        "custom_scheduler_url",
        "threads_per_worker",
        "resources",
        "extraArgs",
        "env",
        "mounts",
        "securityContext",
    },
    "jupyter": {"enabled"},
}


def test_helm_values():
    (values,) = load(DEPLOY / "kubernetes" / "helm-values.yaml")
    assert set(values) <= set(HELM_KEYS)
    for part, keys in HELM_KEYS.items():
        assert set(values[part]) <= keys, part
    for part in ("scheduler", "worker"):
        assert f"{values[part]['image']['repository']}:{values[part]['image']['tag']}" == IMAGE
        env = {e["name"]: e for e in values[part]["env"]}
        for e in env.values():
            if "valueFrom" in e:
                assert e["valueFrom"]["secretKeyRef"]["key"] in CERT_FILES
        assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in env
        assert f"DASK_DISTRIBUTED__COMM__TLS__{part.upper()}__CERT" in env
    assert values["scheduler"]["extraArgs"] == ["--protocol", "tls"]
    assert (
        values["worker"]["custom_scheduler_url"]
        == f"tls://daskgmm-scheduler:{values['scheduler']['servicePort']}"
    )
    check_command(
        ["dask", "worker", values["worker"]["custom_scheduler_url"], *values["worker"]["extraArgs"]]
    )
    check_command(["dask", "scheduler", *values["scheduler"]["extraArgs"]])
    assert values["jupyter"]["enabled"] is False  # the chart's default password is public


# ---------------------------------------------------------------------------
# dask configuration
# ---------------------------------------------------------------------------
def test_dask_config_keys_exist_and_values_make_sense():
    import distributed
    from dask.utils import parse_timedelta

    defaults = yaml.safe_load((Path(distributed.__file__).parent / "distributed.yaml").read_text())
    mine = load(DEPLOY / "dask" / "dask.yaml")[0]

    def walk(m, ref, path):
        for k, v in m.items():
            assert k in ref, "unknown key " + ".".join(path + [k])
            if isinstance(v, dict) and isinstance(ref[k], dict):
                walk(v, ref[k], path + [k])

    walk(mine, defaults, [])
    d = mine["distributed"]
    mem = d["worker"]["memory"]
    assert 0 < mem["target"] < mem["spill"] < mem["pause"] < mem["terminate"] < 1
    assert d["scheduler"]["allowed-failures"] >= 3
    for t in d["comm"]["timeouts"].values():
        assert parse_timedelta(t) >= 30
    tls = d["comm"]["tls"]
    assert d["comm"]["require-encryption"] is True
    paths = [tls["ca-file"]] + [tls[r][k] for r in ("scheduler", "worker", "client") for k in ("cert", "key")]
    assert {Path(p).name for p in paths} == CERT_FILES
    assert all(p.startswith("/certs/") for p in paths)  # where compose and Kubernetes mount them


# ---------------------------------------------------------------------------
# HPC
# ---------------------------------------------------------------------------
def test_jobqueue_config_builds_job_scripts():
    pytest.importorskip("dask_jobqueue")
    import dask
    import dask_jobqueue
    from dask.utils import parse_bytes
    from dask_jobqueue.pbs import PBSJob
    from dask_jobqueue.slurm import SLURMJob

    defaults = yaml.safe_load((Path(dask_jobqueue.__file__).parent / "jobqueue.yaml").read_text())["jobqueue"]
    cfg = load(DEPLOY / "hpc" / "jobqueue.yaml")[0]["jobqueue"]
    assert set(cfg) == {"slurm", "pbs"}
    for system, keys in cfg.items():
        assert set(keys) <= set(defaults[system]), set(keys) - set(defaults[system])
    flat = {f"jobqueue.{s}.{k}": v for s, keys in cfg.items() for k, v in keys.items()}
    with dask.config.set(flat):
        scripts = {
            "slurm": SLURMJob(scheduler="tls://10.0.0.1:8786", name="w", config_name="slurm").job_script(),
            "pbs": PBSJob(scheduler="tls://10.0.0.1:8786", name="w", config_name="pbs").job_script(),
        }
    assert "#SBATCH --mem=64G" in scripts["slurm"] and "#SBATCH -t 02:00:00" in scripts["slurm"]
    assert "#PBS -l select=1:ncpus=16:mem=64GB" in scripts["pbs"]
    for script in scripts.values():
        assert not REMOVED.search(script)
        (line,) = [ln for ln in script.splitlines() if " -m " in ln]
        argv = shlex.split(line)
        module = argv[argv.index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, module
        check_command(["dask", "worker", *argv[argv.index("-m") + 2 :]])
        # Dask's memory across a job's processes stays below what the batch system grants
        per_worker = parse_bytes(argv[argv.index("--memory-limit") + 1])
        nworkers = int(argv[argv.index("--nworkers") + 1])
        assert per_worker * nworkers < parse_bytes("64GiB")  # SLURM's 64G and PBS's 64GB are GiB
        assert "--lifetime" in argv


def fit_lines(script: Path) -> list[str]:
    """The `daskgmm fit ...` command of a batch script, continuation lines joined."""
    text = script.read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("daskgmm fit ")]


@pytest.mark.parametrize("name", ["fit-slurm.sh", "fit-pbs.sh"])
def test_batch_scripts_are_valid_bash_and_their_fit_line_parses(name):
    script = DEPLOY / "hpc" / name
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (line,) = fit_lines(script)
    # shell variables -> example values, then through the real parser
    values = {
        "DATA": "data.zarr",
        "K": "3",
        "SCHEDULER_FILE": "run/scheduler.json",
        "MODEL": "model.npz",
        "FIT_ARGS": "--seed 0",
    }
    line = re.sub(
        r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}', r"${\1}", line
    )  # ${A[@]+"${A[@]}"}: a list, maybe empty
    argv = shlex.split(re.sub(r"\$\{?(\w+)(:-)?\}?", lambda m: values[m.group(1)], line))
    assert check_command(argv) == "daskgmm fit"
    assert "--scheduler-file" in argv and "--save-model" in argv and argv[-2:] == ["--seed", "0"]
    text = script.read_text()
    assert "dask scheduler --protocol tls" in text
    assert re.search(r'worker --scheduler-file "\$SCHEDULER_FILE"', text)


DEPLOY_SCRIPTS = sorted(DEPLOY.rglob("*.sh"))


@pytest.mark.parametrize("script", DEPLOY_SCRIPTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_deploy_scripts_pass_shellcheck(script):
    # SC2086 (unquoted variables), SC2013 (for ... in $(cat ...)) and the rest, info level included
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    r = subprocess.run([shellcheck, "--severity=info", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


STAND_IN_SRUN = """#!/usr/bin/env bash
# stand-in for srun on one machine: runs --ntasks copies of the command
n=1
while [[ "$1" == --* ]]; do case "$1" in --ntasks=*) n=${1#--ntasks=};; esac; shift; done
pids=()
for _ in $(seq "$n"); do "$@" & pids+=($!); done
# like SLURM: SIGTERM to every task, SIGKILL to those left after the KillWait (here 30 s)
stop() {
    kill -TERM "${pids[@]}" 2>/dev/null
    for _ in $(seq 300); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[@]}" 2>/dev/null
    wait
}
trap stop TERM INT
wait
"""


def test_slurm_batch_script_runs_a_fit(tmp_path):
    """fit-slurm.sh as SLURM would run it on a 2-node allocation, here on loopback.

    (It used to hang now and then, more often on a loaded machine such as inside the full
    suite: the fit returned, but the script's clean-up signalled the scheduler and the
    ``--no-nanny`` workers at once, a worker could hang in its shutdown, and the script's
    unbounded ``wait`` never returned. The script now stops the workers first, then the
    scheduler, each with a bounded wait.)
    """
    import zarr

    from daskgmm.datasets import write_blobs_zarr

    bash = shutil.which("bash")
    scripts = sysconfig.get_path("scripts")
    if bash is None or not os.path.exists(os.path.join(scripts, "dask")):
        pytest.skip("needs bash and the dask/daskgmm console scripts beside this interpreter")
    subprocess.run(
        [sys.executable, str(DEPLOY / "tls" / "make_certs.py"), str(tmp_path / "tls")],
        check=True,
        capture_output=True,
    )
    true_means = write_blobs_zarr(str(tmp_path / "blobs.zarr"), 20_000, 8, 3, 5_000, 1).means
    assert zarr.open(str(tmp_path / "blobs.zarr"), mode="r").shape == (20_000, 8)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(STAND_IN_SRUN)
    (bin_dir / "srun").chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "SLURM_"))},
        "PATH": os.pathsep.join([str(bin_dir), scripts, os.environ.get("PATH", "")]),
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_MEM_PER_NODE": "1024",
        "DASKGMM_TLS_DIR": str(tmp_path / "tls"),
        "DASKGMM_RUN_DIR": str(tmp_path / "run"),
        "DASKGMM_INTERFACE": "lo",
        "DASKGMM_FIT_ARGS": "--seed 0",
        "DASKGMM_WORKER_ARGS": "--no-nanny",
        "TMPDIR": str(tmp_path),
    }
    model_path = tmp_path / "model.npz"
    p = subprocess.Popen(
        [bash, str(DEPLOY / "hpc" / "fit-slurm.sh"), str(tmp_path / "blobs.zarr"), "3", str(model_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        try:
            out, err = p.communicate(timeout=100)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            pytest.fail(
                f"fit-slurm.sh did not finish in 100 s; its stderr ends with:\n{err[-4000:]}\nstdout:\n{out[-2000:]}"
            )
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        # the script's trap stops its scheduler and workers; make sure nothing it started is left
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    assert p.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["converged"]
    assert re.search(r"Scheduler at:\s+tls://127\.0\.0\.1:\d+", err)
    assert len(re.findall(r"Registered to:\s+tls://127\.0\.0\.1:", err)) == 2  # both srun tasks, over TLS

    import daskgmm

    model = daskgmm.load(model_path)
    d = np.linalg.norm(model.means_[:, None, :] - true_means[None], axis=2)
    assert d.min(axis=0).max() < 0.1
