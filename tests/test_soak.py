"""A short soak (issue 22, item 4): a few epochs of the demo set through 2 persistent
DataLoader workers and their decode helpers leave no file descriptor and no /dev/shm entry
behind. (``benchmarks/soak.py`` runs 20 epochs and checks RSS too; memory figures are not
asserted in tests.) It caught a drop's traceback keeping the dataset generator's frames, and
with them a decoded clip's memfd, alive in a worker until the garbage collector ran: one more
open memfd per epoch."""
import os
import sys

import pytest

from mmstream.demo import build_demo_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def soak():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import soak
    finally:
        sys.path.pop(0)
    return soak


def test_epochs_leave_no_descriptor_or_shared_memory_behind(tmp_path, soak):
    res = soak.soak(build_demo_data(tmp_path / "demo"), epochs=4, workers=2, log=lambda _: None)
    roles = set(res["rows"][-1]["procs"])
    assert {"main", "worker0", "worker1", "helper0", "helper1"} <= roles  # every process was seen
    assert len(res["kept_each_epoch"]) == 1 and res["kept_each_epoch"][0] > 0  # the same samples each epoch
    assert res["same_processes"] is False  # the helpers are new each epoch; the workers are not:
    assert all(res["rss"][r]["same_process"] for r in ("main", "worker0", "worker1"))
    fds = {role: [row["procs"][role]["fds"] for row in res["rows"]] for role in roles}
    assert res["fds_ok"], fds
    assert res["shm_ok"], res["shm"]
