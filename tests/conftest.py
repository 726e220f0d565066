import json
import os
import shutil

import pytest


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def text_records(n, prefix="q"):
    """LLaVA-style records without media: the stream machinery at no decode cost."""
    return [{"id": f"{prefix}{i}", "conversations": [{"from": "human", "value": f"{prefix} {i}?"},
                                                     {"from": "gpt", "value": f"answer {i}"}]}
            for i in range(n)]


@pytest.fixture
def text_config(tmp_path):
    """A config over two text-only sources (13 + 8 records)."""
    a = write_jsonl(tmp_path / "a.jsonl", text_records(13, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", text_records(8, "b"))
    return {"sources": [{"name": "a", "format": "llava", "annotations": a},
                        {"name": "b", "format": "llava", "annotations": b}],
            "loader": {"seed": 3}}


@pytest.fixture(autouse=True, scope="session")
def _own_cache_home(tmp_path_factory):
    """Record indexes and annotation copies go to this session's folder, not ~/.cache
    (subprocesses inherit it)."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache_home"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


requires_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None and not os.environ.get("CI"),
                                     reason="ffmpeg CLI not installed (make test installs it)")


#: Test modules that start clusters, kill processes or count /dev/shm entries: under
#: pytest-xdist they run one after another on one worker (``--dist loadgroup``).
SERIAL_MODULES = {"test_lifetime", "test_ray_engine", "test_ray_cluster", "test_supervise", "test_storage",
                  "test_index_cache", "test_soak"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SERIAL_MODULES:
            item.add_marker(pytest.mark.xdist_group("serial"))
