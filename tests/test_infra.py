"""Deployment artefacts agree with the Kubernetes schemas, with the app and with each other:
manifests (kubernetes-validate, offline schemas), probes vs the app's routes, HPA target,
limits, settings in env vars, the Dockerfile (parsed: no Docker engine here), the Grafana
dashboard's queries vs the metrics a live server exports."""
from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from specops.config import Settings
from specops.server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S_VERSIONS = ["1.33.0", "1.37.0"]  # a recent 1.3x and the newest bundled schema


def manifests() -> list[tuple[str, dict]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in sorted(INFRA.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def only(kind: str, file: str = "k8s_deployment.yaml") -> dict:
    [doc] = [d for name, d in manifests() if d["kind"] == kind and name.startswith(file + ":")]
    return doc


@pytest.fixture(scope="module")
def pod() -> dict:
    return only("Deployment")["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    [c] = pod["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


# -- schemas ----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name, doc", manifests(), ids=[n for n, _ in manifests()])
def test_manifest_validates(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)  # raises with the path of the bad field


def test_the_validator_is_not_vacuous(pod):
    bad = json.loads(json.dumps(only("Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limitz"] = {"cpu": "2"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_every_file_has_its_pieces():
    kinds = {d["kind"] for name, d in manifests() if name.startswith("k8s_deployment.yaml:")}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


# -- the pod ---------------------------------------------------------------------------------------
def test_limits_are_2_cpu_4gi_and_guaranteed(container):
    res = container["resources"]
    assert res["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert res["requests"] == res["limits"]  # Guaranteed QoS: the budget's limit is the real one


@pytest.fixture(scope="module")
def served():
    """path -> does the app (main.py, as uvicorn runs it) answer GET with anything but 404/405?
    The client is not entered, so no lifespan: nothing loads, routes still answer."""
    from fastapi.testclient import TestClient

    from main import app

    client = TestClient(app, raise_server_exceptions=False)
    return lambda path: client.get(path).status_code not in (404, 405)


def test_probes_name_paths_and_ports_the_app_serves(container, served):
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == "/health/live"  # never kills a pod that is still syncing
    assert all(served(p["path"]) for p in probes.values())
    assert not served("/no-such-path")  # the check can fail
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["port"] for p in probes.values()} == {"http"} and ports["http"] == Settings().port == 8888


def test_startup_probe_allows_a_multi_gb_sync(container):
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600  # 10 min at least


def test_grace_period_covers_the_pause_and_the_drain(pod, container, env):
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env["SPECOPS_DRAIN_GRACE_S"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pause + drain + 5


def test_env_vars_are_settings_and_parse(env):
    """Every SPECOPS_* variable is a Settings field (a typo would be silently ignored) and the
    values validate; spinning is off, so the HPA's CPU signal means work."""
    fields = {n for n in env if n.startswith("SPECOPS_")}
    unknown = {n for n in fields if n[len("SPECOPS_"):].lower() not in Settings.model_fields}
    assert not unknown
    given = {n[len("SPECOPS_"):].lower(): v for n, v in env.items() if n in fields and v is not None}
    settings = Settings(**given, memory_limit_bytes=4 * 2**30)  # the downward API fills this one
    assert settings.intra_op_threads <= 2 and settings.draft_intra_op_threads <= 2


def test_spinning_is_off_everywhere(env):
    """Spinning threads keep CPU busy while idle: the CPU HPA would scale on nothing. The
    manifest, the image and the settings' default all say no."""
    assert env["SPECOPS_ALLOW_SPINNING"] == "false"
    assert Settings.model_fields["allow_spinning"].default is False
    image_env = " ".join(a for op, a in final_stage() if op == "ENV")
    assert "SPECOPS_ALLOW_SPINNING=false" in image_env.split()


def test_memory_limit_comes_from_the_container_limit(container):
    [ref] = [e["valueFrom"]["resourceFieldRef"] for e in container["env"] if e["name"] == "SPECOPS_MEMORY_LIMIT_BYTES"]
    assert ref == {"containerName": container["name"], "resource": "limits.memory", "divisor": "1"}


def test_no_service_links_to_clobber_specops_port(pod):
    # A Service named specops injects SPECOPS_PORT=tcp://...; Settings.port would reject it.
    assert pod["spec"]["enableServiceLinks"] is False


def test_security_context_and_writable_mounts(pod, container, env):
    spec, sc = pod["spec"], container["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert "/tmp" in writable
    for path in (env["SPECOPS_MODEL_CACHE_DIR"], env["HF_HOME"]):
        assert any(path.startswith(w + "/") for w in writable), f"{path} is on the read-only root"
    models = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "models"]
    for path in (env["SPECOPS_TARGET_MODEL"], env["SPECOPS_DRAFT_MODEL"], env["SPECOPS_KERNEL_CACHE_DIR"]):
        assert path == "none" or any(path.startswith(m + "/") for m in models)


def test_prometheus_scrape_annotations_point_at_metrics(pod, container, served):
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and served(notes["prometheus.io/path"])
    assert int(notes["prometheus.io/port"]) in {p["containerPort"] for p in container["ports"]}


# -- what points at the pod -------------------------------------------------------------------------
@pytest.mark.parametrize("file", ["k8s_deployment.yaml", "hpa-queue-depth.yaml"])
def test_hpa_targets_the_deployment_by_name(file):
    hpa, deploy = only("HorizontalPodAutoscaler", file), only("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deploy["metadata"]["name"]}
    cpu = [m["resource"]["target"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu == [{"type": "Utilization", "averageUtilization": 70}]
    assert "replicas" not in deploy["spec"]  # the HPA owns the count


def test_queue_depth_variant_scales_on_an_exported_gauge():
    hpa = only("HorizontalPodAutoscaler", "hpa-queue-depth.yaml")
    [metric] = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert metric == "specops_queue_depth" and metric in exported_families()


def test_service_and_pdb_select_the_pods(pod, container):
    labels = pod["metadata"]["labels"]
    service, pdb = only("Service"), only("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert only("Deployment")["spec"]["selector"]["matchLabels"] == labels
    [port] = service["spec"]["ports"]
    assert port["port"] == 8888 and port["targetPort"] == "http"


def test_prep_job_writes_the_folders_the_deployment_reads(env):
    job = only("Job", "model-prep-job.yaml")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    for path in (env["SPECOPS_TARGET_MODEL"], env["SPECOPS_KERNEL_CACHE_DIR"]):
        assert path in script
    # the tiles and pass costs are written with the replicas' own settings
    for name in ("SPECOPS_KERNEL", "SPECOPS_INTRA_OP_THREADS", "SPECOPS_ALLOW_SPINNING", "SPECOPS_MAX_BATCH"):
        assert f"{name}={env[name]} " in script
    assert env["SPECOPS_DRAFT_MODEL"] == "none" or env["SPECOPS_DRAFT_MODEL"] in script
    claim = only("PersistentVolumeClaim", "model-prep-job.yaml")["metadata"]["name"]
    volumes = only("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert claim in {v.get("persistentVolumeClaim", {}).get("claimName") for v in volumes}


# -- Dockerfile (parsed: `docker build` needs an engine this machine does not run) ----------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage `FROM ... AS name`, up to the next FROM."""
    steps = dockerfile()
    start = next(i for i, (op, a) in enumerate(steps) if op == "FROM" and a.lower().endswith(f" as {name}"))
    end = next((i for i in range(start + 1, len(steps)) if steps[i][0] == "FROM"), len(steps))
    return steps[start:end]


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    start = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[start:]


def test_dockerfile_is_multi_stage_slim_and_non_root(pod):
    steps = dockerfile()
    froms = [args for op, args in steps if op == "FROM"]
    stages = {f.split()[-1] for f in froms if " AS " in f}
    assert len(froms) >= 2 and all("slim" in f or f.startswith("${") or f.split()[0] in stages for f in froms)
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    assert "slim" in args["PYTHON_IMAGE"]
    [user] = [a for op, a in final_stage() if op == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it
    assert int(uid) == pod["spec"]["securityContext"]["runAsUser"]


def test_image_ships_the_tiled_kernel_built_without_a_compiler_at_run_time():
    """The kernel stage compiles specops/kernels/qmatmul.c; the runtime stage copies the library
    beside the source (where kernels.library() looks first) and installs no compiler."""
    kernel = " ".join(a for _, a in stage("kernel"))
    assert "gcc" in kernel and "specops.runtime.kernels" in kernel
    runtime = [a for op, a in final_stage() if op == "COPY"]
    assert "--from=kernel /kernel/ ./specops/kernels/" in runtime
    assert "gcc" not in " ".join(a for _, a in final_stage())


def test_image_installs_no_torch():
    """The conversion tools live in the `prepare` stage; the runtime stage installs the
    pinned dependencies only."""
    import tomllib

    instructions = " ".join(a for _, a in final_stage()).lower()
    assert not re.search(r"\b(torch|transformers|onnxruntime[-_]genai)\b", instructions)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if re.match(r"(torch|transformers|onnxruntime-genai)\b", d)]
    build = " ".join(a for _, a in stage("build")).lower()
    assert "tomllib" in build and "'dependencies'" in build  # installs exactly these


def test_image_serves_the_app_on_the_probed_port(container):
    [cmd] = [a for op, a in final_stage() if op == "CMD"]
    argv = json.loads(cmd)
    assert argv[:2] == ["uvicorn", "main:app"] and argv[argv.index("--port") + 1] == "8888"
    assert "8888" in [a for op, a in final_stage() if op == "EXPOSE"]


def test_image_copies_only_what_dockerignore_lets_in():
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]

    def excluded(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        result = False
        for pattern in ignore:
            negate, pat = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                result = not negate
        return result

    sources = [src for op, a in final_stage() if op == "COPY" and "--from" not in a
               for src in shlex.split(a)[:-1]] + ["pyproject.toml"]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not excluded(src), f"{src} is copied but .dockerignore leaves it out of the context"
    for big in ("build", ".venv", ".git", "tests", "specops_build"):
        assert excluded(big)


# -- Grafana ---------------------------------------------------------------------------------------
def dashboard_exprs() -> list[str]:
    board = json.loads((INFRA / "grafana" / "specops-dashboard.json").read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels and all(p.get("targets") for p in panels)
    return [t["expr"] for p in panels for t in p["targets"]]


def queried_metrics() -> set[str]:
    return {m for e in dashboard_exprs() for m in re.findall(r"\b(specops_[a-z0-9_]+)", e)}


def family_of(name: str, families: dict[str, str]) -> str | None:
    """A queried series name -> its exported family (histogram parts, counters' _total)."""
    if name in families:
        return name
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base if families.get(base) == "histogram" else None


def exported_families(text: str | None = None) -> dict[str, str]:
    """{family: type} from the TYPE lines of a /metrics text (a fresh registry by default)."""
    if text is None:
        from prometheus_client import generate_latest

        text = generate_latest(Metrics().registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def test_dashboard_queries_only_declared_metrics_and_labels():
    families = exported_families()
    assert {m for m in queried_metrics() if family_of(m, families) is None} == set()
    # Labels in `by (...)` are the service's own, `le`, or the ones Prometheus adds per target.
    declared = {label for m in vars(Metrics()).values() for label in getattr(m, "_labelnames", ())}
    used = {x.strip() for e in dashboard_exprs() for group in re.findall(r"by \(([^)]*)\)", e)
            for x in group.split(",")}
    assert used <= declared | {"le", "namespace", "pod", "instance", "job"}


def test_dashboard_covers_the_issue():
    queried = queried_metrics()
    for needed in ("specops_generated_tokens_total", "specops_target_passes_total",
                   "specops_spec_accepted_tokens_per_pos_total", "specops_latency_seconds_bucket",
                   "specops_time_to_first_token_seconds_bucket", "specops_queue_depth", "specops_requests_total"):
        assert needed in queried


def test_dashboard_metrics_are_in_a_live_scrape():
    """Start the real server (embedded models), make one generation so labelled series exist,
    scrape /metrics and match every queried series to an exported family."""
    import httpx
    from server_harness import start_server

    server = start_server()
    try:
        server.wait_ready()
        reply = httpx.post(server.base_url + "/generate", json={"prompt": "Hello", "max_new_tokens": 4}, timeout=60)
        assert reply.status_code == 200, reply.text
        text = httpx.get(server.base_url + "/metrics", timeout=10).text
    finally:
        server.stop()
    families = exported_families(text)
    missing = {m for m in queried_metrics() if family_of(m, families) is None}
    assert not missing, f"the dashboard queries metrics the service does not export: {sorted(missing)}"
    samples = set(re.findall(r"^(specops_[a-z0-9_]+)[{ ]", text, re.M))
    assert {"specops_generated_tokens_total", "specops_latency_seconds_bucket"} <= samples
