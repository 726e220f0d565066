"""The Ray engine on a multi-node cluster simulated on this machine (ray.cluster_utils: a head
without CPUs, where the driver runs, and two 1-CPU worker nodes): a worker node removed
mid-run, with tasks and with the actor pool; the run completes with every key exactly once
and the local engine's records and frames."""
import contextlib
import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from mmstream.sinks import verify  # noqa: E402
from test_ray_engine import assert_same_cache, listed_shards, small  # noqa: E402,F401  (small: a fixture)

TESTS = os.path.dirname(os.path.abspath(__file__))
#: Seconds each decode sleeps on the cluster's workers (a run long enough to lose a node in).
DECODE_SLEEP = "0.6"


@contextlib.contextmanager
def node_environment():
    """What the nodes' processes inherit: tests/ importable (the slow test decoder), slow decodes."""
    env = {"PYTHONPATH": os.pathsep.join([TESTS] + sys.path), "MMSTREAM_TEST_DECODE_SLEEP": DECODE_SLEEP}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    with node_environment():
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False,
            # a removed node is noticed within seconds
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 0}})
    yield c
    c.shutdown()


def two_workers(cluster) -> list:
    """The cluster's 1-CPU worker nodes, two of them (a node removed by a test is replaced)."""
    workers = list(cluster.worker_nodes)
    with node_environment():
        while len(workers) < 2:
            workers.append(cluster.add_node(num_cpus=1))
    cluster.wait_for_nodes()
    return workers


def last_json(text: str) -> dict:
    """The JSON summary among the lines Ray prints to the driver's stdout (a node died, ...)."""
    return json.JSONDecoder().raw_decode(text, text.index('{\n "output"'))[0]


@pytest.mark.parametrize("mode", ["tasks", "actors"])
def test_a_node_removed_mid_run_every_key_exactly_once(cluster, small, tmp_path, mode):
    cfg, reference = small
    workers = two_workers(cluster)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mmstream.cli", "cache", cfg, "--output", str(out), "--engine", "ray",
           "--address", cluster.address, "--no-progress", "--json", "--maxcount", "3"]
    proc = subprocess.Popen(cmd + (["--ray-actors"] if mode == "actors" else []),
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS] + sys.path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not listed_shards(out):  # the run is under way
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    cluster.remove_node(workers[0], allow_graceful=False)  # its writer dies mid-group
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    summary = last_json(stdout)
    assert summary["finalized"] and summary["kept"] == 8
    assert_same_cache(reference, out)  # every key once, the same records and frame files
    assert verify(str(out)).ok
    run = json.loads((out / "manifest.json").read_text())["runs"]["0"]
    assert run["writers"] == mode


def test_without_an_address_a_run_starts_its_own_instance_beside_a_running_cluster(cluster, small, tmp_path):
    """A cluster already runs on this machine (the fixture's head, as after ``ray start``):
    Ray's ``init()`` without an address would join it (and refuse ``num_cpus``); mmstream
    without ``--address`` starts its own local instance, as its help says."""
    cfg, reference = small
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([TESTS] + sys.path)  # the config's test decoder
    res = subprocess.run([sys.executable, "-m", "mmstream.cli", "cache", cfg, "--output", str(out), "--engine", "ray",
                          "--workers", "1", "--no-progress", "--json"], env=env, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert last_json(res.stdout)["kept"] == 8
    assert_same_cache(reference, out)
