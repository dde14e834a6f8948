"""A pod's resources on this host: a memory cgroup of the manifest's limit and a CPU quota, made
as root below this process's own cgroups (so whatever limits this process already has still
bind), plus the counters the rehearsal reports. cgroup v2 where the unified hierarchy has the
memory controller, else v1 (memory and cpu hierarchies); `SandboxError` says why neither works.

    box = Sandbox.create("rehearsal", memory_bytes=4 << 30, cpus=2.0)
    subprocess.Popen(cmd, preexec_fn=box.enter)   # the child joins before it execs
    box.counters()  # usage, peak, anon/file/mapped, major faults, failcnt, OOM kills
    box.remove()

Used by scripts/pod_rehearsal.py and tests/test_cgroup.py.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.cgroup import find_memory_cgroup, parse_flat_keyed, parse_mountinfo, parse_proc_cgroup  # noqa: E402

PERIOD_US = 100_000


class SandboxError(RuntimeError):
    """No memory cgroup can be made here; the message says what was tried and what failed."""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_dir(controller: str) -> tuple[Path, Path] | None:
    """(mount point, this process's cgroup directory) for a v1 controller ("cpu", "memory") or
    the unified hierarchy ("")."""
    paths = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text()):
        wanted = (m.version == 2) if controller == "" else (m.version == 1 and controller in m.controllers)
        if wanted and controller in paths:
            root = m.root.rstrip("/")
            path = paths[controller]
            rel = path[len(root):] if path == root or path.startswith(root + "/") else ""
            return Path(m.mount_point), Path(m.mount_point + rel.rstrip("/"))
    return None


@dataclass
class Sandbox:
    version: int
    memory_dir: Path
    cpu_dir: Path | None  # v1: a directory of the cpu hierarchy; v2: memory_dir
    memory_bytes: int
    cpus: float

    @classmethod
    def create(cls, name: str, memory_bytes: int, cpus: float) -> Sandbox:
        if os.geteuid() != 0:
            raise SandboxError("creating a cgroup needs root (run as root, or in a VM/container that "
                               "delegates a cgroup subtree to this user)")
        errors = []
        for make in (cls._v2, cls._v1):
            try:
                return make(f"{name}-{os.getpid()}", memory_bytes, cpus)
            except (OSError, SandboxError) as err:
                errors.append(f"{make.__name__[1:]}: {err}")
        raise SandboxError("no memory cgroup could be created: " + "; ".join(errors))

    @classmethod
    def _v2(cls, name: str, memory_bytes: int, cpus: float) -> Sandbox:
        found = _own_dir("")
        if found is None:
            raise SandboxError("no cgroup2 mount")
        top, own = found
        if "memory" not in (top / "cgroup.controllers").read_text().split():
            raise SandboxError(f"the memory controller is not on the unified hierarchy ({top})")
        d = own / name
        d.mkdir()
        if not (d / "memory.max").exists():  # enable the controllers for own's children
            _write(own / "cgroup.subtree_control", "+memory +cpu")
        _write(d / "memory.max", str(memory_bytes))
        if (d / "memory.swap.max").exists():  # a pod has no swap
            _write(d / "memory.swap.max", "0")
        _write(d / "cpu.max", f"{int(cpus * PERIOD_US)} {PERIOD_US}")
        return cls(2, d, d, memory_bytes, cpus)

    @classmethod
    def _v1(cls, name: str, memory_bytes: int, cpus: float) -> Sandbox:
        mem = find_memory_cgroup()
        if mem is None or mem.version != 1:
            raise SandboxError("no v1 memory hierarchy mounted")
        d = mem.directory / name
        d.mkdir()
        _write(d / "memory.limit_in_bytes", str(memory_bytes))
        if (d / "memory.memsw.limit_in_bytes").exists():  # a pod has no swap
            _write(d / "memory.memsw.limit_in_bytes", str(memory_bytes))
        cpu = _own_dir("cpu")
        cpu_dir = None
        if cpu is not None:
            cpu_dir = cpu[1] / name
            cpu_dir.mkdir()
            _write(cpu_dir / "cpu.cfs_period_us", str(PERIOD_US))
            _write(cpu_dir / "cpu.cfs_quota_us", str(int(cpus * PERIOD_US)))
        return cls(1, d, cpu_dir, memory_bytes, cpus)

    def enter(self) -> None:
        """Move the calling process in (for `preexec_fn`: the child joins before it execs)."""
        pid = str(os.getpid())
        _write(self.memory_dir / "cgroup.procs", pid)
        if self.cpu_dir is not None and self.cpu_dir != self.memory_dir:
            _write(self.cpu_dir / "cgroup.procs", pid)

    def reset_peak(self) -> bool:
        """Restart the kernel's peak counter (v1 max_usage_in_bytes; v2 memory.peak cannot be
        reset from here): True if done."""
        if self.version == 1:
            _write(self.memory_dir / "memory.max_usage_in_bytes", "0")
            return True
        return False

    def counters(self) -> dict:
        """One sample: bytes charged now and at the kernel's peak, anonymous / file / mapped file
        pages, major faults, limit hits and OOM kills (cumulative since creation)."""
        d = self.memory_dir
        stat = parse_flat_keyed((d / "memory.stat").read_text())
        if self.version == 2:
            events = parse_flat_keyed((d / "memory.events").read_text())
            peak = d / "memory.peak"
            return {"t": time.monotonic(), "usage": int((d / "memory.current").read_text()),
                    "peak": int(peak.read_text()) if peak.exists() else None,
                    "anon": stat.get("anon", 0), "file": stat.get("file", 0),
                    "mapped_file": stat.get("file_mapped", 0), "pgmajfault": stat.get("pgmajfault", 0),
                    "limit_hits": events.get("max", 0), "oom": events.get("oom", 0),
                    "oom_kill": events.get("oom_kill", 0)}
        oom = parse_flat_keyed((d / "memory.oom_control").read_text())
        return {"t": time.monotonic(), "usage": int((d / "memory.usage_in_bytes").read_text()),
                "peak": int((d / "memory.max_usage_in_bytes").read_text()),
                "anon": stat.get("total_rss", stat.get("rss", 0)), "file": stat.get("total_cache", stat.get("cache", 0)),
                "mapped_file": stat.get("total_mapped_file", stat.get("mapped_file", 0)),
                "pgmajfault": stat.get("total_pgmajfault", stat.get("pgmajfault", 0)),
                "limit_hits": int((d / "memory.failcnt").read_text()), "oom": oom.get("under_oom", 0),
                "oom_kill": oom.get("oom_kill", 0)}

    def remove(self, timeout_s: float = 10.0) -> None:
        """Remove the cgroups once their processes are gone (rmdir fails while one is alive)."""
        for d in {self.memory_dir, self.cpu_dir} - {None}:
            end = time.monotonic() + timeout_s
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.1)
