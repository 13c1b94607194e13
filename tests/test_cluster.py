"""Running on a Ray cluster: a real two-node cluster on this machine that a job is submitted to with
`ray job submit`, where each stage group runs (placement for GPU clusters), and the launcher and
KubeRay files that start real clusters.

The two nodes are `ray start` processes in sessions of their own, with token authentication on (a
token of their own, never ~/.ray/auth_token), every port chosen free, a private temp dir, and a tag
in their environment: the test kills exactly what they started, whatever happens.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import media
import pytest
import yaml
from ray.runtime_env import RuntimeEnv
from runs import (
    busy_worker,
    comparable,
    compared,
    kill_tagged,
    manifest_of,
    output_files,
    shard_samples,
    tagged_env,
    tagged_processes,
)

from core.storage import OutputDir
from pipeline.config import RunConfig
from pipeline.definition import PIPELINE
from pipeline.placement import Placement, PlacementError, place
from pipeline.verify import verify

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
VENV_BIN = Path(sys.executable).parent
DEMO_SETTINGS = ["transcribe.store_features=true"]  # those of the demo_shards fixture


def ray_pin() -> str:
    (version,) = re.findall(r"^ray\[[^\]]*\]==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    return version


# -- placement: where each group runs on a GPU cluster (no Ray needed) ------------------------------


def placements(config: RunConfig, cluster: dict[str, float]) -> dict[str, Placement]:
    return {g.name: place(g, [config.stages[s.name] for s in g.stages], config.execution, cluster) for g in PIPELINE}


def test_model_stages_get_gpu_actor_pools_and_the_rest_stays_on_cpus():
    config = RunConfig.load(overrides=["transcribe.device=cuda", "execution.model_batch_size=16"])
    placed = placements(config, {"CPU": 256.0, "GPU": 4.0})
    assert placed["text"] == Placement("text", cpus=1.0, gpus=1.0, workers=4, batch_size=16, actors=True)
    assert placed["text"].remote_args(config.execution.task_retries) == {"max_restarts": -1, "max_task_retries": 3}
    for name in ("ingest", "clips"):
        assert (placed[name].gpus, placed[name].actors, placed[name].batch_size) == (0.0, False, 1), name
        assert placed[name].remote_args(3) == {"max_retries": 3}
    assert placed["clips"].workers == 256 and placed["ingest"].workers == 512  # probe asks for half a CPU

    sized = RunConfig.load(overrides=["transcribe.device=cuda", "execution.gpu_workers=2", "execution.max_workers=10"])
    placed = placements(sized, {"CPU": 256.0, "GPU": 4.0})
    assert (placed["text"].workers, placed["clips"].workers, placed["ingest"].workers) == (2, 10, 10)


def test_a_cpu_configuration_asks_for_no_gpu_even_on_a_gpu_cluster():
    placed = placements(RunConfig(), {"CPU": 8.0, "GPU": 2.0})
    assert all(p.gpus == 0 and not p.actors for p in placed.values())
    # One item per call on CPUs: Ray Data fuses the text group into the clips group's tasks, which
    # would otherwise each wait for model_batch_size sources.
    assert all(p.batch_size == 1 for p in placed.values())


def test_asking_for_a_gpu_the_cluster_lacks_names_the_group():
    with pytest.raises(PlacementError, match="the text stages ask for 1 GPU per worker; the cluster has 0"):
        placements(RunConfig.load(overrides=["caption.device=cuda", "caption.vlm_path=/models/qwen"]), {"CPU": 8.0})


# -- the launcher and KubeRay files ---------------------------------------------------------------


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_launcher_yaml_has_cpu_and_gpu_workers_token_auth_and_the_setup_order():
    launcher = load("launcher.yaml")
    for key in (
        "cluster_name",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "file_mounts",
    ):
        assert key in launcher, key
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types and {"cpu_worker", "gpu_worker"} <= set(types)
    assert types[launcher["head_node_type"]]["resources"] == {"CPU": 0}
    for name in ("cpu_worker", "gpu_worker"):
        assert 1 <= types[name]["min_workers"] <= types[name]["max_workers"] <= launcher["max_workers"]
    # Every node runs scripts/setup.sh, which installs torch first, then the pins, then the rest.
    assert any("bash scripts/setup.sh" in command for command in launcher["setup_commands"])
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    order = [
        setup.index(step)
        for step in (
            "install torch==2.13.0",
            "-r requirements.txt",
            "-r requirements-nodeps.txt",
            "install --no-deps -e .",
        )
    ]
    assert order == sorted(order)
    head, workers = launcher["head_start_ray_commands"][-1], launcher["worker_start_ray_commands"][-1]
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "--dashboard-host=127.0.0.1" in head and "--address=$RAY_HEAD_IP:6379" in workers
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token on every node


def _images(cluster_spec: dict) -> list[str]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c["image"] for g in groups for c in g["template"]["spec"]["containers"]]


def _check_cluster_spec(spec: dict) -> None:
    version = ray_pin()
    assert spec["rayVersion"] == version
    assert spec["authOptions"] == {"mode": "token", "secretName": "talkcurate-ray-token"}
    images = _images(spec)
    assert images and all(image.endswith((f":{version}-cpu", f":{version}-gpu")) for image in images), images
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (gpu,) = groups["gpu"]["template"]["spec"]["containers"]
    assert gpu["image"].endswith("-gpu") and gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (cpu,) = groups["cpu"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_kuberay_manifests_agree_with_the_pins():
    raycluster, rayjob = load("raycluster.yaml"), load("rayjob.yaml")
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    _check_cluster_spec(raycluster["spec"])
    _check_cluster_spec(rayjob["spec"]["rayClusterSpec"])
    job = rayjob["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["backoffLimit"] >= 1
    assert job["entrypoint"].startswith("talkcurate run s3://") and job["entrypoint"].endswith("--no-progress")
    assert "--set transcribe.device=cuda" in job["entrypoint"]  # the GPU group has work
    RuntimeEnv(**yaml.safe_load(job["runtimeEnvYAML"]))  # Ray's own validation
    # The images are cluster/Dockerfile built on Ray's image of the pinned version.
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^ARG BASE=rayproject/ray:{re.escape(ray_pin())}-py311$", dockerfile, re.MULTILINE)
    assert f"BASE=rayproject/ray:{ray_pin()}-py311-gpu" in dockerfile and "bash scripts/setup.sh" in dockerfile


def test_runtime_env_is_valid_and_carries_no_credentials():
    runtime_env = load("runtime_env.yaml")
    RuntimeEnv(**runtime_env)
    assert runtime_env["working_dir"] == "." and ".venv/" in runtime_env["excludes"]
    assert not [k for k in runtime_env.get("env_vars", {}) if re.search("KEY|SECRET|TOKEN|PASSWORD", k)]


# -- a real two-node cluster ------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports free now and outside the kernel's ephemeral range: a port taken from that range can be
    handed to one of Ray's own outgoing connections before the node binds it (CI saw the head's client
    server die of exactly that). Ray's worker ports (10002-19999 by default) are kept clear too."""
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = list(range(20000, max(low, 20000 + 4 * count)))
    random.shuffle(candidates)
    ports = []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"fewer than {count} free ports between 20000 and {low}")


@dataclass
class LocalCluster:
    dashboard: str
    env: dict[str, str]  # what a client needs: the token, authentication on, talkcurate's venv first on PATH
    token: str
    worker_tag: str  # in the environment of the second node's processes (raylet, workers), and theirs only

    def api(self, path: str) -> dict:
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def alive_nodes(self) -> list[dict]:
        try:
            nodes = self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        except OSError:
            return []
        return [n for n in nodes if n["state"] == "ALIVE"]

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "ray"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


NODE_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
)


def node_ports(ports: list[int]) -> list[str]:
    """Every port a node opens, chosen free (Ray's defaults would collide with the other node's)."""
    return [arg for option, port in zip(NODE_PORTS, ports, strict=True) for arg in (option, str(port))]


def _start_node(args: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "wb") as out:
        subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--block", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(condition, what: str, logs: list[Path], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no {what} after {timeout} s:\n" + "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)
            )
        time.sleep(0.5)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Iterator[LocalCluster]:
    """A head on 127.0.0.1 and a second node joined with `ray start --address`, one CPU each."""
    temp = Path(tempfile.mkdtemp(prefix="tc", dir="/tmp"))  # short: Ray's unix socket paths must fit
    logs = tmp_path_factory.mktemp("cluster_logs")
    token = secrets.token_hex(32)
    (temp / "token").write_text(token)
    head_tag, worker_tag = uuid.uuid4().hex, uuid.uuid4().hex
    auth = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(temp / "token"),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env = {**tagged_env(head_tag), **auth}
    gcs, dashboard, client, *ports = free_ports(3 + 2 * len(NODE_PORTS))
    common = ["--num-cpus", "1", "--object-store-memory", str(300 * 2**20), "--disable-usage-stats"]
    cluster = LocalCluster(f"http://127.0.0.1:{dashboard}", env, token, worker_tag)
    try:
        _start_node(
            [
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(gcs),
                "--temp-dir",
                str(temp),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dashboard),
                "--ray-client-server-port",
                str(client),
                *node_ports(ports[:6]),
                *common,
            ],
            env,
            logs / "head.log",
        )
        _wait(lambda: len(cluster.alive_nodes()) == 1, "head node", [logs / "head.log"])
        _start_node(
            ["--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1", *node_ports(ports[6:]), *common],
            {**tagged_env(worker_tag), **auth},
            logs / "worker.log",
        )
        _wait(lambda: len(cluster.alive_nodes()) == 2, "second node", [logs / "head.log", logs / "worker.log"])
        yield cluster
    finally:
        kill_tagged(worker_tag)
        kill_tagged(head_tag)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_job_submitted_to_a_two_node_cluster_curates_the_demo_media(two_nodes, demo_shards, tmp_path):
    # Authentication is on: a request without the token is turned away.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(two_nodes.dashboard + "/api/v0/nodes?limit=1", timeout=10)
    assert refused.value.code in (401, 403)

    out = tmp_path / "out"
    job = f"curate-{uuid.uuid4().hex[:8]}"
    submitted = two_nodes.ray(
        "job",
        "submit",
        "--address",
        two_nodes.dashboard,
        "--submission-id",
        job,
        "--runtime-env",
        str(CLUSTER / "runtime_env.yaml"),
        "--",
        "python",
        "-m",
        "pipeline",
        "run",
        str(media.DEMO),
        "--out",
        str(out),
        *(a for s in DEMO_SETTINGS for a in ("--set", s)),
        "--no-progress",
        timeout=600,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    status = two_nodes.ray("job", "status", "--address", two_nodes.dashboard, job)
    assert f"Job '{job}' succeeded" in status.stdout, status.stdout + status.stderr
    logs = two_nodes.ray("job", "logs", "--address", two_nodes.dashboard, job)
    assert re.search(r"^6 sources processed", logs.stdout, re.MULTILINE), logs.stdout[-3000:]

    # The clips group (decoding, cutting, faces, sync) ran on both nodes.
    tasks = two_nodes.api("/api/v0/tasks?limit=10000&detail=1")["data"]["result"]["result"]
    nodes = {t["node_id"] for t in tasks if "MapBatches(clips)" in t["name"] and t["node_id"]}
    assert len(nodes) == 2, sorted((t["name"], t["node_id"]) for t in tasks)

    # Shards, manifest and index: the same as a local run's, and verify finds nothing wrong.
    clean, written = output_files(demo_shards), output_files(out)
    assert compared(manifest_of(written)) == compared(manifest_of(clean))
    assert comparable(shard_samples(written)) == comparable(shard_samples(clean))
    index = json.loads(written["index.json"])
    assert {e["url"] for e in index["shardlist"]} == {n for n in written if n.startswith("shards/")}
    checked, problems = verify(OutputDir(str(out)))
    assert checked == len(index["shardlist"]) and not problems


ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.mark.slow
def test_a_job_survives_its_worker_node_dying(two_nodes, demo_shards, tmp_path):
    """The second node is killed whole (raylet, workers) while one of its workers is inside a task
    of the job; the job finishes on the head with the samples a local run gives. Runs last: it ends
    the cluster's second node."""
    out = tmp_path / "out"
    job = f"curate-{uuid.uuid4().hex[:8]}"
    submitted = two_nodes.ray(
        "job",
        "submit",
        "--address",
        two_nodes.dashboard,
        "--submission-id",
        job,
        "--no-wait",
        "--runtime-env",
        str(CLUSTER / "runtime_env.yaml"),
        "--",
        "python",
        "-m",
        "pipeline",
        "run",
        str(media.DEMO),
        "--out",
        str(out),
        *(a for s in DEMO_SETTINGS for a in ("--set", s)),
        "--no-progress",
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]

    def status() -> str:
        return two_nodes.api(f"/api/jobs/{job}")["status"]

    def logs() -> str:
        return two_nodes.ray("job", "logs", "--address", two_nodes.dashboard, job).stdout[-3000:]

    since: dict[int, float] = {}

    def busy_or_ended() -> bool:
        return (
            busy_worker(tagged_processes(two_nodes.worker_tag), "MapBatches(", since, busy_s=0.5) is not None
            or status() in ENDED
        )

    _wait(busy_or_ended, "busy worker on the second node", [], timeout=300)
    assert status() not in ENDED, f"the job ended before a task of it ran on the second node:\n{logs()}"
    kill_tagged(two_nodes.worker_tag)
    _wait(lambda: status() in ENDED, "end of the job", [], timeout=600)
    assert status() == "SUCCEEDED", logs()
    assert len(two_nodes.alive_nodes()) == 1

    clean, written = output_files(demo_shards), output_files(out)
    assert compared(manifest_of(written)) == compared(manifest_of(clean))
    assert comparable(shard_samples(written)) == comparable(shard_samples(clean))
    checked, problems = verify(OutputDir(str(out)))
    assert checked and not problems
