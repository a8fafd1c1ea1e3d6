"""deploy/ checked against the tools that will read it: Dagster's own config schemas for the instance and
workspace files, Kubernetes' JSON schemas (kubernetes-validate, strict: unknown fields fail) and yamllint
for the manifests, the ECS API model (botocore) for the serving task definition, and the cross-references
between them (ports, names, env vars, commands, secrets, and the serving shutdown and probe arithmetic)."""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.support import DEPLOY, REPO_ROOT, parse_dockerfile, parse_env

ECS_INSTANCE = DEPLOY / "ecs" / "dagster.yaml"
ECS_SERVING = DEPLOY / "ecs" / "serving-task-definition.yaml"
K8S_INSTANCE = DEPLOY / "k8s" / "config" / "dagster.yaml"
MANIFESTS = [DEPLOY / "k8s" / name for name in ("dagster.yaml", "mlflow.yaml", "serving.yaml")]
KUBERNETES_VERSIONS = ["1.29", "1.33", "1.37"]  # oldest supported by EKS/GKE today .. newest schema shipped
TOKEN_SECRET, ADMIN_SECRET = "mlops-serve-token", "mlops-serve-admin-token"
SECRETS = {"mlops-postgres", "mlops-mlflow", TOKEN_SECRET, ADMIN_SECRET}  # created by hand, see the README section
IMAGE_UID = 10001
# mlops-serve's shutdown contract: after SIGTERM it drains for MLOPS_SERVE_GRACE_PERIOD and exits, prediction
# log flushed, at the latest this many seconds later (its hard deadline). The platform's SIGKILL must come after.
HARD_DEADLINE_S = 5


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _env_names(node) -> set[str]:
    """Every `{env: NAME}` in a Dagster config tree."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_names(v) for v in node)) if node else set()
    return set()


@pytest.fixture
def instance_env(monkeypatch):
    """Placeholder values for every variable the instance files name, as a deployment would set them."""
    for name in _env_names(_load(ECS_INSTANCE)) | _env_names(_load(K8S_INSTANCE)):
        monkeypatch.setenv(name, "5432" if name.endswith("_PORT") else f"value-of-{name.lower()}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _manifests() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in _manifests() if doc["kind"] == kind}


def _kustomization() -> dict:
    return _load(DEPLOY / "k8s" / "kustomization.yaml")


def _settings() -> dict[str, str]:
    generator = next(g for g in _kustomization()["configMapGenerator"] if g["name"] == "mlops-settings")
    return dict(literal.split("=", 1) for literal in generator["literals"])


def _image_env() -> dict[str, str]:
    return {k: v for e in parse_dockerfile().final.all("ENV") for k, v in parse_env(e).items()}


def _serving_pod() -> dict:
    return _kind("Deployment")["mlops-serve"]["spec"]["template"]["spec"]


_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _k8s_serving_env() -> dict[str, str]:
    """The serving container's environment as the kubelet sets it: values (with `$(NAME)` of an earlier entry
    expanded), ConfigMap keys, required Secrets."""
    env = {}
    for entry in _serving_pod()["containers"][0]["env"]:
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = _REFERENCE.sub(lambda m: env.get(m[1], m[0]), entry["value"])
        elif "configMapKeyRef" in source:
            env[entry["name"]] = _settings()[source["configMapKeyRef"]["key"]]
        elif not source["secretKeyRef"].get("optional"):
            env[entry["name"]] = "value-of-a-secret"
    return env


def _ecs_serving() -> dict:
    return _load(ECS_SERVING)


def _ecs_serving_env() -> dict[str, str]:
    container = _ecs_serving()["containerDefinitions"][0]
    return {e["name"]: e["value"] for e in container["environment"]} | dict.fromkeys(
        (s["name"] for s in container["secrets"]), "value-of-a-secret"
    )


def _served(env: dict[str, str], monkeypatch):
    """What mlops-serve makes of a container's environment: its own parser, its defaults for what is unset."""
    from serving.server import parse_config

    for name in list(os.environ):
        if name.startswith(("MLOPS_", "MLFLOW_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parse_config([])


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity of bytes ("2Gi", "256Mi", "1G") as an integer."""
    units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"(\d+)([kMGT]i?|Ki)?", quantity).groups()
    return int(number) * units[unit or ""]


# --- YAML ------------------------------------------------------------------------------------------


def test_every_deploy_yaml_lints_clean():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 8
    problems = [f"{path.relative_to(REPO_ROOT)}:{p.line}: {p.message}" for path in files
                for p in linter.run(path.read_text(), config, str(path))]  # fmt: skip
    assert not problems, "\n".join(problems)


# --- the Dagster instance --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [ECS_INSTANCE, K8S_INSTANCE], ids=["ecs", "k8s"])
def test_instance_config_passes_dagsters_schemas(path, instance_env, tmp_path):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.storage.config import pg_config

    shutil.copy(path, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # the top-level schema, as DagsterInstance.get() runs it
    assert set(config["storage"]) == {"postgres"}
    assert process_config(pg_config(), config["storage"]["postgres"]).success
    # Each pluggable class's own schema, with the environment resolved (what instantiating it checks).
    for section in ("compute_logs", "run_coordinator", "run_launcher"):
        module = importlib.import_module(config[section]["module"].replace("dagster.core.", "dagster._core."))
        cls = getattr(module, config[section]["class"])
        result = process_config(cls.config_type(), config[section].get("config", {}))
        assert result.success, f"{section}: {[e.message for e in result.errors]}"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = config["concurrency"]["runs"]
    assert limits["max_concurrent_runs"] > 0 and limits["tag_concurrency_limits"]


def test_ecs_and_k8s_instances_differ_only_in_the_run_launcher():
    ecs, k8s = _load(ECS_INSTANCE), _load(K8S_INSTANCE)
    assert (ecs.pop("run_launcher")["class"], k8s.pop("run_launcher")["class"]) == ("EcsRunLauncher", "K8sRunLauncher")
    assert ecs == k8s


def test_the_ecs_launcher_builds_from_its_config_and_run_tasks_get_every_setting(instance_env):
    from dagster._core.launcher import RunLauncher
    from dagster._serdes import ConfigurableClassData

    section = _load(ECS_INSTANCE)["run_launcher"]
    launcher = ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(section["config"])).rehydrate(
        as_type=RunLauncher
    )  # boto3 clients only: no AWS call happens here
    assert type(launcher).__name__ == "EcsRunLauncher"
    # A run task loads the instance and the prod resources: every variable they read must reach it.
    secrets = {s["name"]: s["valueFrom"] for s in section["config"]["secrets"]}
    passed = set(section["config"]["env_vars"]) | set(secrets)
    needed = _env_names({k: v for k, v in _load(ECS_INSTANCE).items() if k != "run_launcher"})
    # MLOPS_SERVE_TOKEN: prod resources require it in every run that checks a deployment (MLOPS_SERVING_URL set).
    needed |= {"MLOPS_ENV", "MLOPS_S3_BUCKET", "MLFLOW_TRACKING_URI", "MLOPS_SERVING_URL", "MLOPS_SERVE_TOKEN"}
    assert needed <= passed, f"not passed to run tasks: {sorted(needed - passed)}"
    # Secrets travel as Secrets Manager references in the run's task definition, never as copied plain values:
    # the launcher's `secrets` replace the launching task's, so each one a run needs must be listed here.
    assert {"DAGSTER_PG_PASSWORD", "MLOPS_SERVE_TOKEN"} <= set(secrets)
    assert not set(secrets) & set(section["config"]["env_vars"])
    assert secrets["MLOPS_SERVE_TOKEN"] == {"env": "MLOPS_SERVE_TOKEN_SECRET_ARN"}
    launched = {s["name"]: s["valueFrom"] for s in launcher.secrets}
    assert launched["MLOPS_SERVE_TOKEN"] == "value-of-mlops_serve_token_secret_arn"  # resolved from the environment


def test_the_k8s_launcher_names_what_the_manifests_create():
    config = _load(K8S_INSTANCE)["run_launcher"]["config"]
    assert config["service_account_name"] in _kind("ServiceAccount")
    assert config["instance_config_map"] == "dagster-instance"
    generated = {g["name"]: g for g in _kustomization()["configMapGenerator"]}
    assert Path(generated["dagster-instance"]["files"][0]).name == "dagster.yaml"
    assert set(config["env_config_maps"]) <= set(generated)
    assert config["postgres_password_secret"] in SECRETS
    # Run pods get the serving token (every key of its Secret), and never the admin token.
    assert TOKEN_SECRET in config["env_secrets"] and ADMIN_SECRET not in config["env_secrets"]
    assert set(config["env_secrets"]) <= SECRETS
    # Run pods, the webserver and the daemon mount the instance where the image says DAGSTER_HOME is.
    image_env = {k: v for e in parse_dockerfile().final.all("ENV") for k, v in parse_env(e).items()}
    assert config["dagster_home"] == image_env["DAGSTER_HOME"]
    for name in ("mlops-dagster-webserver", "mlops-dagster-daemon"):
        mounts = _kind("Deployment")[name]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "instance", "mountPath": config["dagster_home"]} in mounts
    # Every setting the instance reads comes from mlops-settings, except the password (its Secret).
    needed = _env_names(_load(K8S_INSTANCE)) - {"DAGSTER_PG_PASSWORD"}
    assert needed <= set(_settings()), f"missing from mlops-settings: {sorted(needed - set(_settings()))}"


@pytest.mark.parametrize(
    "path, host", [(DEPLOY / "ecs" / "workspace.yaml", None), (DEPLOY / "k8s" / "config" / "workspace.yaml", "k8s")]
)
def test_workspaces_point_at_the_code_server(path, host, monkeypatch):
    import tomllib

    from dagster._config import process_config
    from dagster._core.workspace.config_schema import WORKSPACE_CONFIG_SCHEMA

    monkeypatch.setenv("MLOPS_CODE_SERVER_HOST", "mlops-code-location.local")
    assert process_config(WORKSPACE_CONFIG_SCHEMA, _load(path)).success
    server = _load(path)["load_from"][0]["grpc_server"]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert server["location_name"] == pyproject["tool"]["dagster"]["code_location_name"]
    command = parse_dockerfile().final.last("CMD").exec_form()
    assert str(server["port"]) == command[command.index("--port") + 1]
    if host == "k8s":
        service = _kind("Service")[server["host"]]
        assert [p["port"] for p in service["spec"]["ports"]] == [server["port"]]


def test_local_defaults_stay_embedded():
    local = _load(DEPLOY / "local" / "dagster.yaml")
    assert not {"storage", "run_storage", "event_log_storage", "run_launcher", "compute_logs"} & set(local)


@pytest.mark.parametrize("path", [DEPLOY / "local" / "dagster.yaml", ECS_INSTANCE, K8S_INSTANCE])
def test_every_instance_runs_one_retraining_at_a_time(path):
    from sensors.guard import RETRAINING_TAG

    config = _load(path)
    limits = config["run_queue"] if "run_queue" in config else config["concurrency"]["runs"]
    retraining = [limit for limit in limits["tag_concurrency_limits"] if limit["key"] == RETRAINING_TAG]
    assert retraining == [{"key": RETRAINING_TAG, "value": "true", "limit": 1}]


# --- Kubernetes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_pass_kubernetes_schemas_strictly(version):
    import kubernetes_validate

    documents = _manifests()
    assert {doc["kind"] for _, doc in documents} >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for name, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']} at {path}: {error.message}")


def test_kustomization_lists_every_manifest_and_file():
    kustomization = _kustomization()
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    for generator in kustomization["configMapGenerator"]:
        for file in generator.get("files", []):
            assert (DEPLOY / "k8s" / file).exists(), file
    images = {image["name"] for image in kustomization["images"]}
    used = {c["image"] for d in _kind("Deployment").values() for c in d["spec"]["template"]["spec"]["containers"]}
    assert used == images, "every container's image is rewritten by the kustomization"
    image = kustomization["images"][0]
    assert _settings()["DAGSTER_CURRENT_IMAGE"] == f"{image['newName']}:{image['newTag']}"


def test_every_pod_runs_as_the_images_user_with_resources_and_known_references():
    import tomllib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    service_accounts, config_maps = (
        set(_kind("ServiceAccount")),
        {g["name"] for g in _kustomization()["configMapGenerator"]},
    )
    for name, deployment in _kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == IMAGE_UID, name
        assert pod["serviceAccountName"] in service_accounts, name
        for container in pod["containers"]:
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), f"{name}: requests"
            assert "memory" in container["resources"]["limits"], f"{name}: limits"
            program = container.get("command", ["(image default)"])[0]
            assert (
                program == "(image default)" or program in scripts or (Path(sys.executable).parent / program).exists()
            )
            for source in [*container.get("envFrom", []), *container.get("env", [])]:
                ref = source.get("configMapRef") or source.get("valueFrom", {}).get("configMapKeyRef")
                secret = source.get("secretRef") or source.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"] in config_maps, f"{name}: ConfigMap {ref}"
                assert secret is None or secret["name"] in SECRETS, f"{name}: Secret {secret}"
                if ref and "key" in ref:
                    assert ref["key"] in _settings(), f"{name}: mlops-settings has no {ref['key']}"
    for name, service in _kind("Service").items():
        selector = service["spec"]["selector"].items()
        targets = [
            d for d in _kind("Deployment").values() if selector <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} Deployments"
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name


def test_the_code_location_serves_the_images_default_command():
    pod = _kind("Deployment")["mlops-code-location"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "command" not in container and "args" not in container
    command = parse_dockerfile().final.last("CMD").exec_form()
    port = int(command[command.index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    # Kubernetes' gRPC probe asks the standard health service what `dagster api grpc-health-check` asks.
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": "DagsterApi"}


def test_mlflow_server_accepts_the_host_clients_use():
    url = urlsplit(_settings()["MLFLOW_TRACKING_URI"])
    deployment = _kind("Deployment")["mlflow"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["mlflow", "server"]
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    # MLflow answers 403 to a Host header outside --allowed-hosts (its default admits only localhost and private IPs).
    assert any(fnmatch.fnmatch(url.netloc, pattern) for pattern in allowed), (url.netloc, allowed)
    service = _kind("Service")[url.hostname]
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]
    assert command[command.index("--port") + 1] == str(url.port)
    assert _settings()["MLFLOW_ARTIFACTS_DESTINATION"].startswith(f"s3://{_settings()['MLOPS_S3_BUCKET']}/")


def test_serving_probes_ports_and_scaling_match_the_server():
    from serving.server import ServeConfig, build_parser

    deployment = _kind("Deployment")["mlops-serve"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["mlops-serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    served_ports = {"http-rest": 8000, "grpc": 8001, "http-metrics": 8002}  # Triton's layout
    assert (
        ports
        == served_ports
        == {
            "http-rest": ServeConfig().http_port,
            "grpc": ServeConfig().port,
            "http-metrics": ServeConfig().metrics_port,
        }
    )
    service = {p["name"]: (p["port"], p["targetPort"]) for p in _kind("Service")["mlops-serve"]["spec"]["ports"]}
    assert service == {name: (port, name) for name, port in served_ports.items()}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http-metrics"}
    assert container["startupProbe"]["httpGet"]["port"] == "http-metrics"

    env = {e["name"]: e.get("value") for e in container["env"]}
    help_text = build_parser().format_help()
    documented = set(re.findall(r"\[([A-Z][A-Z0-9_]+)", help_text))
    # A variable mlops-serve does not read is there only to build another's value.
    building = {name for value in env.values() if value for name in _REFERENCE.findall(value)}
    assert set(env) - building <= documented, f"mlops-serve reads no {sorted(set(env) - building - documented)}"
    cpu_limit = float(container["resources"]["limits"]["cpu"])
    assert int(env["MLOPS_SERVE_WORKERS"]) * int(env["MLOPS_SERVE_INTRA_OP_THREADS"]) <= cpu_limit

    hpa = _kind("HorizontalPodAutoscaler")["mlops-serve"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlops-serve"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert _kind("PodDisruptionBudget")["mlops-serve"]["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    headless = _kind("Service")["mlops-serve-headless"]
    assert headless["spec"]["clusterIP"] == "None"


def test_the_k8s_launcher_gives_run_pods_the_serving_token(instance_env, tmp_path):
    """The Job the K8sRunLauncher creates for a run, rendered by dagster-k8s itself: its container reads the
    token Secret, and the Job passes Kubernetes' schemas. A throwaway kubeconfig: no cluster is reached."""
    import kubernetes
    import kubernetes_validate
    from dagster._core.launcher import RunLauncher
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._serdes import ConfigurableClassData
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "users": [{"name": "test", "user": {}}],
            }
        )
    )
    section = _load(K8S_INSTANCE)["run_launcher"]
    config = {**section["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    launcher = ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(config)).rehydrate(
        as_type=RunLauncher
    )
    context = K8sContainerContext.create_for_run(
        DagsterRun(job_name="training_job", run_id="0123456789abcdef"), launcher, include_run_tags=False
    )
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=_settings()["DAGSTER_CURRENT_IMAGE"], run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123456789abcdef",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": TOKEN_SECRET}} in container["envFrom"]
    assert ADMIN_SECRET not in yaml.safe_dump(manifest)
    # envFrom names each variable after its key: the key the serving pods read is the variable the run reads.
    token = {e["name"]: e for e in _serving_pod()["containers"][0]["env"]}["MLOPS_SERVE_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["key"] == "MLOPS_SERVE_TOKEN"


# --- serving: shutdown, probes, secrets, approval, disk --------------------------------------------


def test_the_serving_pod_is_killed_only_after_the_server_has_exited(monkeypatch):
    pod = _serving_pod()
    container = pod["containers"][0]
    served = _served(_k8s_serving_env(), monkeypatch)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    # The hook runs the image's python (first on its PATH: the venv the tests run in, built the same way).
    assert command[:2] == ["python", "-c"] and _image_env()["PATH"].startswith("/opt/venv/bin:")
    assert (Path(sys.executable).parent / "python").exists()
    match = re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[2])
    assert match, command
    pre_stop = float(match[1])
    # Endpoints controller, kube-proxy and L7 proxies need a few seconds to drop a terminating pod.
    assert pre_stop >= 5
    # The kubelet counts terminationGracePeriodSeconds from the start of preStop, then sends SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + served.grace_period + HARD_DEADLINE_S, (
        f"SIGKILL at {pod['terminationGracePeriodSeconds']} s, before preStop {pre_stop} s + grace "
        f"{served.grace_period} s + hard deadline {HARD_DEADLINE_S} s"
    )


def test_the_ecs_serving_task_is_killed_only_after_the_server_has_exited(monkeypatch):
    container = _ecs_serving()["containerDefinitions"][0]
    served = _served(_ecs_serving_env(), monkeypatch)
    # ECS deregisters the task from its target group and waits the deregistration delay before SIGTERM
    # (no preStop needed); stopTimeout then runs from SIGTERM to SIGKILL, at most 120 s on Fargate.
    assert served.grace_period + HARD_DEADLINE_S <= container["stopTimeout"] <= 120


@pytest.mark.parametrize("platform", ["k8s", "ecs"])
def test_liveness_confirms_the_servers_own_stall_verdict(platform, monkeypatch):
    """/health turns 503 only after MLOPS_SERVE_STALL_TIMEOUT without progress; the probe only confirms it."""
    if platform == "k8s":
        served = _served(_k8s_serving_env(), monkeypatch)
        probe = _serving_pod()["containers"][0]["livenessProbe"]
        period, timeout, failures = probe["periodSeconds"], probe["timeoutSeconds"], probe["failureThreshold"]
        assert probe["httpGet"] == {"path": "/health", "port": "http-metrics"}
        ready = _serving_pod()["containers"][0]["readinessProbe"]
        assert ready["httpGet"] == {"path": "/ready", "port": "http-metrics"}
        # Traffic leaves a pod that stops answering before the pod is restarted.
        assert ready["failureThreshold"] * ready["periodSeconds"] <= failures * period
        assert ready["timeoutSeconds"] < ready["periodSeconds"]
    else:
        served = _served(_ecs_serving_env(), monkeypatch)
        check = _ecs_serving()["containerDefinitions"][0]["healthCheck"]
        period, timeout, failures = check["interval"], check["timeout"], check["retries"]
        # The image's HEALTHCHECK command, which asks mlops-serve's /health.
        assert check["command"] == ["CMD", *parse_dockerfile().final.last("HEALTHCHECK").exec_form()]
    assert timeout < period and failures >= 2
    # Slow answers on a busy but live server must last a whole stall timeout before they restart it ...
    assert failures * period >= served.stall_timeout
    # ... and a wedged worker is restarted within three stall timeouts of its last progress.
    assert served.stall_timeout + failures * period <= 3 * served.stall_timeout


def test_the_serving_token_is_required_and_the_admin_token_optional_and_separate():
    env = {e["name"]: e for e in _serving_pod()["containers"][0]["env"]}
    token = env["MLOPS_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"]
    # A missing Secret keeps the pod from starting, instead of serving without authentication.
    assert token == {"name": TOKEN_SECRET, "key": "MLOPS_SERVE_TOKEN", "optional": False}
    # Without the admin token the control plane is off: optional by design, and in a Secret of its own,
    # because the run pods receive every key of the token's Secret.
    admin = env["MLOPS_SERVE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert admin == {"name": ADMIN_SECRET, "key": "MLOPS_SERVE_ADMIN_TOKEN", "optional": True}
    # On ECS the token is a Secrets Manager reference, never a plain value in the task definition.
    container = _ecs_serving()["containerDefinitions"][0]
    secrets = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    assert secrets["MLOPS_SERVE_TOKEN"].startswith("arn:aws:secretsmanager:")
    assert not {e["name"] for e in container["environment"]} & {"MLOPS_SERVE_TOKEN", "MLOPS_SERVE_ADMIN_TOKEN"}


@pytest.mark.parametrize("platform", ["k8s", "ecs"])
def test_production_serving_serves_only_approved_versions(platform, monkeypatch):
    env = _k8s_serving_env() if platform == "k8s" else _ecs_serving_env()
    assert env["MLOPS_SERVE_REQUIRE_APPROVAL"] == "1"
    assert _served(env, monkeypatch).require_approval is True


def test_the_serving_state_volume_holds_the_bounded_prediction_log(monkeypatch):
    pod = _serving_pod()
    env = _k8s_serving_env()
    served = _served(env, monkeypatch)
    # Set explicitly, so the bound sits beside the limit it must fit (a default could move under it).
    assert int(env["MLOPS_PREDICTION_LOG_MAX_TOTAL_BYTES"]) == served.prediction_log_max_total_bytes > 0
    assert served.prediction_log_dir is None and served.cache_dir is None  # both under $MLOPS_HOME
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[_image_env()["MLOPS_HOME"]])
    size_limit = _bytes(volume["emptyDir"]["sizeLimit"])  # past it the kubelet evicts the pod
    # Closed segments are capped by the bound; each worker's open segment (up to max_bytes) comes on top,
    # and the downloaded model versions share the volume.
    open_segments = served.workers * served.prediction_log_max_bytes
    model_cache = 256 * 2**20
    assert size_limit >= served.prediction_log_max_total_bytes + open_segments + model_cache


def test_the_ecs_serving_task_definition_matches_the_api_and_the_k8s_deployment(monkeypatch):
    import botocore.session
    from botocore.validate import ParamValidator

    from serving.server import ServeConfig, build_parser

    definition = _ecs_serving()
    shape = botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition")
    report = ParamValidator().validate(definition, shape.input_shape)  # what `aws ecs register-...` checks
    assert not report.has_errors(), report.generate_report()
    [container] = definition["containerDefinitions"]
    assert container["command"] == ["mlops-serve"] and container["user"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert container["readonlyRootFilesystem"] is True
    assert {m["containerPath"] for m in container["mountPoints"]} == {_image_env()["MLOPS_HOME"], "/tmp"}
    ports = {p["name"]: p["containerPort"] for p in container["portMappings"]}
    assert ports == {
        "http-rest": ServeConfig().http_port,
        "grpc": ServeConfig().port,
        "http-metrics": ServeConfig().metrics_port,
    }
    image = _kustomization()["images"][0]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"
    # Every variable is one mlops-serve reads, and both platforms configure the same server.
    documented = set(re.findall(r"\[([A-Z][A-Z0-9_]+)", build_parser().format_help()))
    assert set(_ecs_serving_env()) <= documented, sorted(set(_ecs_serving_env()) - documented)
    ecs, k8s = vars(_served(_ecs_serving_env(), monkeypatch)), vars(_served(_k8s_serving_env(), monkeypatch))
    differ = {name for name in ecs if ecs[name] != k8s[name]}
    assert differ <= {"tracking_uri"}, {name: (ecs[name], k8s[name]) for name in differ}


@pytest.mark.parametrize("platform", ["k8s", "ecs"])
def test_served_traffic_ships_to_the_pipelines_artifact_store(platform, monkeypatch):
    """Segments go where the production resources read them: the same bucket and prefix as the runs'."""
    from resources.artifact_store import S3ArtifactStore
    from resources.production import production_prefix
    from serving.log_records import segment_key

    served = _served(_k8s_serving_env() if platform == "k8s" else _ecs_serving_env(), monkeypatch)
    monkeypatch.setenv("MLOPS_S3_PREFIX", _settings()["MLOPS_S3_PREFIX"])  # as the run pods get it
    store = S3ArtifactStore(bucket=_settings()["MLOPS_S3_BUCKET"], prefix=f"{production_prefix()}/artifacts")
    key = segment_key("predictions-20131205-20131205T120000-7-000001.jsonl")
    assert f"{served.log_ship_to}/{key}" == store.uri(key)
