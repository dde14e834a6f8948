"""The memory limit of this process's own cgroup: v1 and v2 trees laid out in a temporary folder
as /proc/self/cgroup and mountinfo name them, and a real cgroup made here when we can (root, a
writable hierarchy)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specops.cgroup import (CgroupMount, find_memory_cgroup, parse_flat_keyed, parse_mountinfo, parse_proc_cgroup,
                            read_memory_limit)

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30
V1_UNLIMITED = "9223372036854771712\n"

# As this machine's /proc/self/mountinfo has them (cgroup v1 hierarchies plus an empty cgroup2).
V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def layout(tmp_path: Path, proc_cgroup: str, mountinfo: str, files: dict[str, str]) -> dict:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(proc_cgroup)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return dict(proc_self=tmp_path / "proc/self", fs_root=tmp_path)


def test_parsers_on_literal_text():
    assert parse_proc_cgroup("4:memory:/process_api/c54e\n1:cpu,cpuacct:/\n0::/\n") == {
        "memory": "/process_api/c54e", "cpu": "/", "cpuacct": "/", "": "/"}
    mounts = parse_mountinfo(V1_MOUNTS)
    assert [(m.mount_point, m.version) for m in mounts] == [
        ("/sys/fs/cgroup/cpu", 1), ("/sys/fs/cgroup/memory", 1), ("/sys/fs/cgroup/unified", 2)]
    assert "memory" in mounts[1].controllers
    escaped = parse_mountinfo(r"40 1 0:1 /a\040b /mnt/c\040g rw - cgroup2 none rw" + "\n")
    assert escaped == [CgroupMount("/a b", "/mnt/c g", 2, frozenset())]
    assert parse_flat_keyed("cache 4096\nrss 8192\nhierarchical_memory_limit 1\n") == {
        "cache": 4096, "rss": 8192, "hierarchical_memory_limit": 1}


def test_v1_limit_of_a_nested_cgroup_not_the_root(tmp_path):
    """The case DESIGN.md section 9 saw: a process in a 2400 MiB v1 cgroup below an unlimited root."""
    where = layout(tmp_path, "4:memory:/process_api/abc\n1:cpu:/\n0::/\n", V1_MOUNTS, {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
        "sys/fs/cgroup/memory/process_api/memory.limit_in_bytes": V1_UNLIMITED,
        "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes": f"{2400 << 20}\n"})
    assert read_memory_limit(**where) == (2400 << 20, tmp_path / "sys/fs/cgroup/memory/process_api/abc")


def test_v1_an_unlimited_cgroup_takes_its_parents_limit_and_the_smallest_wins(tmp_path):
    where = layout(tmp_path, "4:memory:/kubepods/pod1/ctr\n", V1_MOUNTS, {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
        "sys/fs/cgroup/memory/kubepods/memory.limit_in_bytes": f"{16 * GiB}\n",
        "sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes": f"{4 * GiB}\n",
        "sys/fs/cgroup/memory/kubepods/pod1/ctr/memory.limit_in_bytes": V1_UNLIMITED})
    assert read_memory_limit(**where) == (4 * GiB, tmp_path / "sys/fs/cgroup/memory/kubepods/pod1")


def test_v1_container_view_mounted_at_its_own_cgroup(tmp_path):
    """Docker without a cgroup namespace: /proc/self/cgroup names the host path, and the mount's
    root is that same path, so the files are at the mount point."""
    mounts = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
    where = layout(tmp_path, "4:memory:/docker/abc\n", mounts,
                   {"sys/fs/cgroup/memory/memory.limit_in_bytes": f"{3 * GiB}\n"})
    assert read_memory_limit(**where) == (3 * GiB, tmp_path / "sys/fs/cgroup/memory")


def test_v2_limit_of_the_own_cgroup_and_of_a_parent(tmp_path):
    files = {"sys/fs/cgroup/kubepods.slice/pod1/memory.max": f"{4 * GiB}\n",
             "sys/fs/cgroup/kubepods.slice/pod1/ctr/memory.max": "max\n",
             "sys/fs/cgroup/kubepods.slice/memory.max": "max\n"}
    where = layout(tmp_path, "0::/kubepods.slice/pod1/ctr\n", V2_MOUNT, files)
    cg = find_memory_cgroup(**where)
    assert cg.version == 2 and cg.directory == tmp_path / "sys/fs/cgroup/kubepods.slice/pod1/ctr"
    assert read_memory_limit(**where) == (4 * GiB, tmp_path / "sys/fs/cgroup/kubepods.slice/pod1")
    (tmp_path / "sys/fs/cgroup/kubepods.slice/pod1/ctr/memory.max").write_text(f"{GiB}\n")
    assert read_memory_limit(**where)[0] == GiB


def test_v2_namespaced_root_and_no_limit_anywhere(tmp_path):
    where = layout(tmp_path / "a", "0::/\n", V2_MOUNT, {"sys/fs/cgroup/memory.max": f"{2 * GiB}\n"})
    assert read_memory_limit(**where) == (2 * GiB, tmp_path / "a/sys/fs/cgroup")
    where = layout(tmp_path / "b", "0::/x\n", V2_MOUNT, {"sys/fs/cgroup/x/memory.max": "max\n"})
    assert read_memory_limit(**where) is None


def test_hybrid_prefers_the_v1_memory_hierarchy(tmp_path):
    """This machine's layout: memory on v1, an empty unified hierarchy beside it."""
    where = layout(tmp_path, "4:memory:/m\n0::/\n", V1_MOUNTS, {
        "sys/fs/cgroup/memory/m/memory.limit_in_bytes": f"{GiB}\n",
        "sys/fs/cgroup/unified/cgroup.procs": "1\n"})
    assert find_memory_cgroup(**where).version == 1
    assert read_memory_limit(**where)[0] == GiB


def test_without_proc_files_the_hierarchy_roots_are_read(tmp_path):
    (tmp_path / "sys/fs/cgroup/memory").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text(f"{GiB}\n")
    assert read_memory_limit(tmp_path / "no-proc", tmp_path)[0] == GiB


def _sandbox_module():
    spec = importlib.util.spec_from_file_location("pod_cgroup", ROOT / "scripts" / "pod_cgroup.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pod_cgroup"] = module
    spec.loader.exec_module(module)
    return module


def test_a_real_cgroup_limit_is_read_by_a_process_inside_it():
    """A child process in a cgroup made here (v2 where it has the memory controller, else v1)
    reads the cgroup's limit, not the root's."""
    pod_cgroup = _sandbox_module()
    try:
        box = pod_cgroup.Sandbox.create("specops-test", memory_bytes=1536 << 20, cpus=1.0)
    except pod_cgroup.SandboxError as err:
        pytest.skip(f"no cgroup can be created here: {err}")
    try:
        code = "from specops.cgroup import read_memory_limit; print(read_memory_limit()[0])"
        out = subprocess.run([sys.executable, "-c", code], preexec_fn=box.enter, capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        assert int(out.stdout) == 1536 << 20
        sample = box.counters()
        assert sample["usage"] >= 0 and sample["oom_kill"] == 0
    finally:
        box.remove()
