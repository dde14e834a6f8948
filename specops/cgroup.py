"""The memory limit of this process's own cgroup (v1 and v2), and its memory counters.

A container sees its cgroup either at the mount point itself (a cgroup namespace, or the
runtime bind-mounting the container's own directory: mountinfo's `root` field is then the
container's path) or as a sub-directory of the host's hierarchy (`/proc/self/cgroup` names it,
relative to the hierarchy's root). Both are found by taking the path from /proc/self/cgroup,
stripping the mount's root (mountinfo field 4) and joining the rest to the mount point.

The limit that binds is the smallest on the way up: a cgroup may have none of its own
(`max`, or v1's huge "unlimited" number) while a parent has one, so every directory from the
process's own up to the mount point is read and the smallest limit wins.

Pure parsers on text, plus readers that take the /proc and / roots as arguments (tests lay out
a fake tree in a temporary folder). No writes: creating cgroups is the rehearsal script's job.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 60  # v1 reports "no limit" as about 2**63 rounded down to a page


@dataclass(frozen=True)
class CgroupMount:
    """One line of /proc/self/mountinfo that mounts a cgroup hierarchy."""
    root: str  # the hierarchy's path shown at the mount point ("/" unless bind-mounted below)
    mount_point: str
    version: int  # 1 or 2
    controllers: frozenset[str]  # v1: from the super options ("memory", "cpu", ...); v2: empty


@dataclass(frozen=True)
class MemoryCgroup:
    """The directory holding this process's memory controller files, and the walk above it."""
    version: int
    directory: Path  # the process's own cgroup
    mount_point: Path  # the walk stops here

    def ancestry(self) -> list[Path]:
        """The own directory, its parents, ..., the mount point (own first)."""
        out, d = [self.directory], self.directory
        while d != self.mount_point and self.mount_point in d.parents:
            d = d.parent
            out.append(d)
        return out


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup -> {controller: path}; the v2 entry (`0::/path`) under the key ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts of /proc/self/mountinfo
    (`id parent major:minor root mount_point options [optional...] - fstype source super_options`)."""
    mounts = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        version = 2 if tail[0] == "cgroup2" else 1
        controllers = frozenset(tail[2].split(",")) if version == 1 else frozenset()
        mounts.append(CgroupMount(_unescape(fields[3]), _unescape(fields[4]), version, controllers))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _inside(mount: CgroupMount, path: str, fs_root: Path) -> Path:
    """The directory of cgroup `path` under `mount`: the path below the mount's root joined to the
    mount point; the mount point itself when the path is not below that root (a namespaced view)."""
    root = mount.root.rstrip("/")  # "" for a mount of the hierarchy's root
    if path == root or path.startswith(root + "/"):
        rel = path[len(root):]
    else:
        rel = ""
    return fs_root / (mount.mount_point.lstrip("/") + rel.rstrip("/"))


def find_memory_cgroup(proc_self: Path = Path("/proc/self"), fs_root: Path = Path("/")) -> MemoryCgroup | None:
    """This process's memory cgroup: v1's `memory` hierarchy if mounted, else v2's unified one
    (where `memory.max` exists); None when neither can be read."""
    try:
        paths = parse_proc_cgroup((proc_self / "cgroup").read_text())
        mounts = parse_mountinfo((proc_self / "mountinfo").read_text())
    except OSError:
        return None
    v1 = [m for m in mounts if m.version == 1 and "memory" in m.controllers]
    if v1 and "memory" in paths:
        return MemoryCgroup(1, _inside(v1[0], paths["memory"], fs_root), fs_root / v1[0].mount_point.lstrip("/"))
    for m in (m for m in mounts if m.version == 2):
        if "" in paths:
            cg = MemoryCgroup(2, _inside(m, paths[""], fs_root), fs_root / m.mount_point.lstrip("/"))
            if any((d / "memory.max").is_file() for d in cg.ancestry()):
                return cg
    return None


def parse_limit(text: str) -> int | None:
    """A limit file's value in bytes; None for v2's `max` or v1's "unlimited" number."""
    text = text.strip()
    if text == "max":
        return None
    value = int(text)
    return None if value >= UNLIMITED else value


def limit_file(version: int) -> str:
    return "memory.max" if version == 2 else "memory.limit_in_bytes"


def cgroup_memory_limit(cg: MemoryCgroup) -> tuple[int, Path] | None:
    """The smallest limit from the cgroup up to the mount point, and the directory that sets it."""
    found = []
    for d in cg.ancestry():
        try:
            value = parse_limit((d / limit_file(cg.version)).read_text())
        except (OSError, ValueError):
            continue
        if value is not None:
            found.append((value, d))
    return min(found, key=lambda f: f[0]) if found else None


def read_memory_limit(proc_self: Path = Path("/proc/self"), fs_root: Path = Path("/")) -> tuple[int, Path] | None:
    """(limit bytes, the cgroup directory that sets it) for this process, or None if unlimited.
    Falls back to the hierarchy roots (`/sys/fs/cgroup/memory.max`, `.../memory/memory.limit_in_bytes`)
    when /proc/self/cgroup or mountinfo cannot be read."""
    cg = find_memory_cgroup(proc_self, fs_root)
    if cg is not None:
        return cgroup_memory_limit(cg)
    base = fs_root / "sys/fs/cgroup"
    for version, d in ((2, base), (1, base / "memory")):
        got = cgroup_memory_limit(MemoryCgroup(version, d, d))
        if got is not None:
            return got
    return None


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`memory.stat` / `memory.events` (v2) or v1's `memory.stat`: "key value" lines."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out
