"""A CI-sized rehearsal (scripts/pod_rehearsal.py) on the small pair: the Deployment's own
environment, the service reading the limit of its own cgroup (no downward-API variable), a
limit of the plan plus its stated reserves, 30 s of mixed load (streams, chat, half-cap
prompts, disconnects): no OOM kill, no 5xx, and the cgroup's measured working set (anon +
mapped files) within the plan less its reclaim margin.
A limit below the plan is refused at start with the numbers. Needs root and a cgroup
hierarchy it can write (skipped with the reason otherwise); the manifest parsing runs anywhere."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from server_harness import ROOT
from specops.budget import plan_for
from specops.config import Settings
from specops.runtime.model_folder import read_model_folder

MiB = 1 << 20


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rehearsal = _script("pod_rehearsal")
SMALL_PAIR = [f"SPECOPS_TARGET_MODEL={ROOT / 'models' / 'target'}", f"SPECOPS_DRAFT_MODEL={ROOT / 'models' / 'draft'}",
              "SPECOPS_MEMORY_MIN_CONTEXT=256"]


def test_the_manifest_gives_the_pod_and_its_environment():
    pod = rehearsal.pod_from_manifest(ROOT / "infra" / "k8s_deployment.yaml")
    assert pod["memory_bytes"] == 4 << 30 and pod["cpus"] == 2.0
    assert pod["env"]["SPECOPS_MEMORY_LIMIT_BYTES"] == str(4 << 30)  # the downward API, filled as the kubelet does
    env = rehearsal.server_env(pod, ["SPECOPS_MAX_BATCH=2"], ["/models=/srv/m"], downward_limit=False)
    assert "SPECOPS_MEMORY_LIMIT_BYTES" not in env and env["SPECOPS_MAX_BATCH"] == "2"
    assert all(not v.startswith("/models") for v in env.values())
    assert [rehearsal.parse_quantity(q) for q in ("4Gi", "500m", "2", "1G")] == [4 << 30, 0.5, 2, 10**9]


def _env(extra: list[str] = ()) -> dict:
    pod = rehearsal.pod_from_manifest(ROOT / "infra" / "k8s_deployment.yaml")
    return rehearsal.server_env(pod, SMALL_PAIR + list(extra), [f"/cache={ROOT / 'build' / 'rehearsal-cache'}"],
                                downward_limit=False)


def _limit_of_the_plan(env: dict) -> tuple[int, Settings]:
    """The smallest limit whose plan (reserves included) is the full context, one sequence."""
    settings = Settings(**{k[len("SPECOPS_"):].lower(): v for k, v in env.items() if k.startswith("SPECOPS_")})
    specs = [read_model_folder(env[k], verify=False) for k in ("SPECOPS_TARGET_MODEL", "SPECOPS_DRAFT_MODEL")]
    without_margin = plan_for(settings.model_copy(update={"memory_limit_bytes": 1 << 40,
                                                          "memory_reclaim_margin": 0.0}), *specs).need_bytes
    limit = int(without_margin / (1 - settings.memory_reclaim_margin)) + MiB
    plan = plan_for(settings.model_copy(update={"memory_limit_bytes": limit}), *specs)
    assert plan.fits and not plan.lowered
    return limit, plan


def _rehearse(env: dict, limit: int, seconds: float) -> dict:
    try:
        return rehearsal.rehearse(env, limit, 2.0, seconds / 60, clients=2, new_tokens=32, ready_timeout_s=300,
                                  speculators=("none", "ngram"))
    except rehearsal.SandboxError as err:
        pytest.skip(f"no cgroup can be created here: {err}")


def test_a_limit_the_plan_accepts_serves_a_mixed_load_within_the_plan():
    env = _env()
    limit, plan = _limit_of_the_plan(env)
    report = _rehearse(env, limit, 30)
    assert report["ready_s"] is not None, report["health"]
    assert report["plan"]["limit_mib"] == round(limit / MiB, 1)  # read from its own cgroup
    assert report["server_alive"] and report["oom_kills"] == 0 and report["returncode"] == 0
    load = report["load"]
    assert load["status_5xx"] == 0 and load["errors"] == 0 and load["requests"] >= 4
    assert {k for k, v in load["by_kind"].items() if v["requests"]} >= {"stream", "long"}
    # the requests named the speculators in turn: each served tokens, and the server counted them
    for name in ("none", "ngram"):
        assert load["by_speculator"][name]["tokens"] > 0 and load["by_speculator"][name]["decode_tok_s"], load
        assert load["server_by_speculator"][name]["tokens"] > 0, load
    none = load["server_by_speculator"]["none"]  # one token a decoding pass, plus each request's first
    assert 0 < none["tokens"] - none["target_passes"] <= load["by_speculator"]["none"]["requests"], load
    # the working set (anon + mapped files: libraries count there when this cgroup faulted them
    # in first) within the plan less its reclaim margin; unmapped page cache may fill the rest
    # of the limit (reclaimable)
    resident = plan.need_bytes - plan.items["reclaim margin"]
    for phase in ("at_load", "under_load"):
        assert report[phase]["max_anon_plus_mapped_mib"] <= resident / MiB, (phase, report[phase], plan.to_dict())


def test_a_limit_below_the_plan_is_refused_at_start_with_the_numbers():
    env = _env(["SPECOPS_MEMORY_MIN_CONTEXT=2048"])
    limit, _ = _limit_of_the_plan(env)
    report = _rehearse(env, limit - 64 * MiB, 0)
    assert report["ready_s"] is None and report["health"]["status"] == "failed"
    reason = report["health"]["reason"]
    assert "do not fit the memory limit" in reason and "MiB" in reason and "reclaim margin" in reason
    assert report["oom_kills"] == 0
