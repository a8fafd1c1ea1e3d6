"""deploy/ checked against the tools that will read it: Dagster's own config schemas for the instance and
workspace files, Kubernetes' JSON schemas (kubernetes-validate, strict: unknown fields fail) and yamllint
for the manifests, and the cross-references between them (ports, names, env vars, commands)."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.support import DEPLOY, REPO_ROOT, parse_dockerfile, parse_env

ECS_INSTANCE = DEPLOY / "ecs" / "dagster.yaml"
K8S_INSTANCE = DEPLOY / "k8s" / "config" / "dagster.yaml"
MANIFESTS = [DEPLOY / "k8s" / name for name in ("dagster.yaml", "mlflow.yaml", "serving.yaml")]
KUBERNETES_VERSIONS = ["1.29", "1.33", "1.37"]  # oldest supported by EKS/GKE today .. newest schema shipped
SECRETS = {"mlops-postgres", "mlops-mlflow", "mlops-serve-token"}  # created by hand, see the README section
IMAGE_UID = 10001


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
    passed = set(section["config"]["env_vars"]) | {s["name"] for s in section["config"]["secrets"]}
    needed = _env_names({k: v for k, v in _load(ECS_INSTANCE).items() if k != "run_launcher"})
    needed |= {"MLOPS_ENV", "MLOPS_S3_BUCKET", "MLFLOW_TRACKING_URI"}
    assert needed <= passed, f"not passed to run tasks: {sorted(needed - passed)}"


def test_the_k8s_launcher_names_what_the_manifests_create():
    config = _load(K8S_INSTANCE)["run_launcher"]["config"]
    assert config["service_account_name"] in _kind("ServiceAccount")
    assert config["instance_config_map"] == "dagster-instance"
    generated = {g["name"]: g for g in _kustomization()["configMapGenerator"]}
    assert Path(generated["dagster-instance"]["files"][0]).name == "dagster.yaml"
    assert set(config["env_config_maps"]) <= set(generated)
    assert config["postgres_password_secret"] in SECRETS
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
    assert ports == {"grpc": ServeConfig().port, "http-metrics": ServeConfig().metrics_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http-metrics"}
    assert container["startupProbe"]["httpGet"]["port"] == "http-metrics"

    env = {e["name"]: e.get("value") for e in container["env"]}
    help_text = build_parser().format_help()
    documented = set(re.findall(r"\[([A-Z][A-Z0-9_]+)", help_text))
    assert set(env) <= documented, f"mlops-serve reads no {sorted(set(env) - documented)}"
    assert pod["terminationGracePeriodSeconds"] > float(env["MLOPS_SERVE_GRACE_PERIOD"])
    cpu_limit = float(container["resources"]["limits"]["cpu"])
    assert int(env["MLOPS_SERVE_WORKERS"]) * int(env["MLOPS_SERVE_INTRA_OP_THREADS"]) <= cpu_limit

    hpa = _kind("HorizontalPodAutoscaler")["mlops-serve"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlops-serve"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert _kind("PodDisruptionBudget")["mlops-serve"]["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    headless = _kind("Service")["mlops-serve-headless"]
    assert headless["spec"]["clusterIP"] == "None"
