"""The deploy files (deploy/) and the image recipe (Dockerfile, requirements.lock): valid for their
formats' schemas, offline, and in agreement with the code, so that a renamed setting, a moved port
or a dropped command fails here rather than in a hospital's cluster.

Kubernetes manifests are checked with kubernetes-validate (the API schemas ship in the package),
compose.yaml with check-jsonschema's copy of the Compose specification's schema; neither fetches
anything.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import AliasChoices

from api.app import create_app
from api.cli import build_parser
from service.infra.settings import Settings
from tests.kit.lock import header, locked

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# The oldest Kubernetes the manifests claim (CronJob timeZone, policy/v1 budgets), and the newest
# whose schemas the installed kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Variables the image's processes read that are not trialbridge settings.
OTHER_PROCESS_VARIABLES = {"MPLCONFIGDIR", "PYTHONUNBUFFERED"}
# compose services running the trialbridge image
APP_SERVICES = ("migrate", "api", "deliverer", "worker")


# -- reading the files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dockerfile:
    """The runtime stage's facts and every stage's base image."""

    bases: list[str]
    instructions: list[tuple[str, str]]  # the runtime stage's, continuation lines joined

    def values(self, keyword: str) -> list[str]:
        """The arguments of every `keyword` instruction of the runtime stage."""
        return [rest for word, rest in self.instructions if word == keyword]

    def one(self, keyword: str) -> str:
        """The arguments of the single `keyword` instruction of the runtime stage."""
        [value] = self.values(keyword)
        return value

    def env(self) -> dict[str, str]:
        """What ENV sets."""
        pairs = (p.split("=", 1) for line in self.values("ENV") for p in shlex.split(line))
        return {k: v for k, v in pairs}  # noqa: C416 - pairs of a split, typed as lists


def dockerfile() -> Dockerfile:
    """Parse the root Dockerfile (comments dropped, continuations joined)."""
    lines = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.startswith("#")
    ]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stages: list[list[tuple[str, str]]] = []
    bases = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            bases.append(rest.split()[0])
            stages.append([])
        stages[-1].append((word, rest.strip()))
    return Dockerfile(bases, stages[-1])


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in deploy/kubernetes (the example Secret included), by file."""
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            yield path.name, doc


def kinds() -> dict[str, dict[str, Any]]:
    """Each object by `Kind/name`."""
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for _, doc in manifests()}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment, Job or CronJob."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def workloads() -> dict[str, dict[str, Any]]:
    """The pod-making objects, by `Kind/name`."""
    return {k: v for k, v in kinds().items() if v["kind"] in ("Deployment", "Job", "CronJob")}


def compose() -> dict[str, Any]:
    """compose.yaml as Compose reads it (YAML merge keys applied)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def env_example() -> dict[str, str]:
    """deploy/env.example: what an operator copies to deploy/.env."""
    pairs = (
        line.split("=", 1)
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {k: v for k, v in pairs}  # noqa: C416 - pairs of a split, typed as lists


def interpolated(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:?message}` and `${NAME:-default}`, from `variables`."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if name in variables:
            return variables[name]
        assert match.group(2) == ":-", f"{name} is neither in env.example nor defaulted"
        return default

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", one, value)


def setting_variables() -> set[str]:
    """Every environment variable that sets a field of Settings."""
    names = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a process with exactly this environment (for trialbridge variables) gets."""
    with monkeypatch.context() as patch:
        for name in list(setting_variables()):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings()


def under(path: str, mounts: set[str]) -> bool:
    """Whether `path` lies inside one of the writable mounts."""
    return any(PurePosixPath(path).is_relative_to(m) for m in mounts)


def absolute(path: Path, workdir: str) -> str:
    """A setting's path as the process sees it, relative ones from the image's WORKDIR."""
    return str(PurePosixPath(workdir) / path)


# -- schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted({name for name, _ in manifests()}))
def test_kubernetes_manifests_follow_the_api_schemas(name: str) -> None:
    docs = [doc for file, doc in manifests() if file == name]
    assert len(docs) == 1  # one object per file: the kustomization lists files
    for version in KUBERNETES_VERSIONS:
        # strict: an unknown field (a typo) is an error, not silently dropped by the API server
        kubernetes_validate.validate(docs[0], version, strict=True)


def test_the_schema_check_refuses_what_the_api_server_would() -> None:
    """The check is real: a misspelt field and a wrong type are caught."""
    deployment = kinds()["Deployment/trialbridge-api"]
    misspelt = copy.deepcopy(deployment)
    context = pod_spec(misspelt)["containers"][0]["securityContext"]
    context["readOnlyRootFileSystem"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[0], strict=True)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="replicas"):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSIONS[0], strict=True)


def test_the_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")}
    assert set(kustomization["resources"]) == files - {"kustomization.yaml", "secret.example.yaml"}
    assert len(kustomization["resources"]) == len(set(kustomization["resources"]))
    [image] = kustomization["images"]
    assert (image["name"], image["newTag"]) == ("trialbridge", VERSION)


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the Compose specification's schema it ships (no download)."""
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    checked = check_compose(COMPOSE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # and the check is real: a condition Compose does not know is refused
    wrong = tmp_path / "compose.yaml"
    wrong.write_text(COMPOSE.read_text().replace("service_completed_successfully", "service_done"))
    refused = check_compose(wrong)
    assert refused.returncode == 1
    assert "depends_on" in refused.stdout


# -- the image ------------------------------------------------------------------------------------


def test_the_image_pins_one_python_release_the_project_supports() -> None:
    image = dockerfile()
    assert len(image.bases) == 2
    assert len(set(image.bases)) == 1  # build and runtime stages on the same release
    found = re.fullmatch(r"python:3\.(\d+)\.(\d+)-slim-bookworm", image.bases[0])
    assert found, image.bases[0]
    minor = f"3.{found.group(1)}"
    assert PYPROJECT["project"]["requires-python"] == f">={minor}"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == minor
    assert f"--python-version {minor} " in header()  # the lock was resolved for that Python


def test_the_image_installs_the_lock_then_the_wheel_without_resolving() -> None:
    image = dockerfile()
    runs = image.values("RUN")
    assert "requirements.lock /tmp/requirements.lock" in image.values("COPY")
    [install] = [r for r in runs if "-r /tmp/requirements.lock" in r]
    assert {"--require-hashes", "--no-deps", "--no-cache-dir"} <= set(install.split())
    [wheel] = [r for r in runs if "/wheels/*.whl" in r]
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in wheel
    assert wheel.endswith("&& pip check")  # a requirement the lock misses fails the build
    assert "requirements.lock" not in (ROOT / ".dockerignore").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"deploy", "**/.env"} <= set(ignored)  # deploy/.env holds the database password


def test_the_image_declares_its_sqlite_folder_a_volume() -> None:
    image = dockerfile()
    database = image.env()["DATABASE_URL"]
    assert database.startswith("sqlite:////")
    folder = str(PurePosixPath(database.removeprefix("sqlite:///")).parent)
    assert json.loads(image.one("VOLUME")) == [folder]
    assert f"mkdir -p {folder}" in " ".join(image.values("RUN"))  # made before VOLUME, by USER
    instructions = [word for word, _ in image.instructions]
    assert instructions.index("USER") < instructions.index("VOLUME")


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    pins = locked()
    wanted = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for requirement in wanted:
        pin = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{requirement.name} {pin.version} is outside {requirement.specifier}: "
            "regenerate requirements.lock (README, Dependency notes)"
        )
    direct = {n for n, p in pins.items() if "trialbridge (pyproject.toml)" in p.via}
    assert direct == {canonicalize_name(r.name) for r in wanted}  # none dropped, none left over


def test_every_locked_package_is_hashed() -> None:
    pins = locked()
    assert len(pins) > len(PYPROJECT["project"]["dependencies"])
    assert [name for name, pin in pins.items() if not pin.hashes] == []
    assert "--generate-hashes" in header()
    assert "pyproject.toml" in header()


# -- the deploy files agree with the code -------------------------------------------------------------


def app_containers() -> dict[str, dict[str, Any]]:
    """Every container of the Kubernetes workloads, by workload."""
    return {k: c for k, w in workloads().items() for c in pod_spec(w)["containers"]}


def test_one_port_everywhere() -> None:
    image = dockerfile()
    port = int(image.one("EXPOSE"))
    cmd = json.loads(image.one("CMD"))
    assert cmd == ["serve", "--host", "0.0.0.0", "--port", str(port)]
    assert f"http://127.0.0.1:{port}/healthz" in image.one("HEALTHCHECK")

    api = compose()["services"]["api"]
    assert api["command"] == cmd
    assert [p.rsplit(":", 1)[1] for p in api["ports"]] == [str(port)]
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(api["healthcheck"]["test"])

    container = app_containers()["Deployment/trialbridge-api"]
    assert container["args"] == cmd
    [declared] = container["ports"]
    assert (declared["name"], declared["containerPort"]) == ("http", port)
    probes = [container[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert [p["port"] for p in probes] == ["http"] * 3
    service = kinds()["Service/trialbridge"]
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    [ingress] = kinds()["NetworkPolicy/trialbridge"]["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": port}]


def test_probes_and_checks_ask_the_app_s_health_routes() -> None:
    routes = {getattr(r, "path", None) for r in create_app().routes}
    container = app_containers()["Deployment/trialbridge-api"]
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe")}
    assert paths == {"/healthz"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= routes


def test_every_command_is_one_the_cli_parses() -> None:
    """The image's entry point is `trialbridge`; each process's arguments must parse."""
    image = dockerfile()
    assert json.loads(image.one("ENTRYPOINT")) == ["trialbridge"]
    commands = {"Dockerfile CMD": json.loads(image.one("CMD"))}
    services = compose()["services"]
    commands |= {f"compose {s}": services[s]["command"] for s in APP_SERVICES}
    for workload, container in app_containers().items():
        assert "command" not in container  # the image's entry point, not a replacement
        commands[workload] = container["args"]
    parser = build_parser()
    for where, argv in commands.items():
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `trialbridge {' '.join(argv)}` is not a command the CLI knows")
    roles = {k: v[0] if v[0] != "deliver" else " ".join(v) for k, v in commands.items()}
    assert roles == {
        "Dockerfile CMD": "serve",
        "compose migrate": "migrate",
        "compose api": "serve",
        "compose deliverer": "deliver --loop",
        "compose worker": "worker",
        "Job/trialbridge-migrate": "migrate",
        "Deployment/trialbridge-api": "serve",
        "Deployment/trialbridge-deliverer": "deliver --loop",
        "Deployment/trialbridge-worker": "worker",
        "CronJob/trialbridge-reevaluate": "reevaluate",
    }


def test_every_variable_the_processes_get_is_a_setting() -> None:
    """A renamed or removed setting would otherwise be ignored (the settings ignore unknown ones)."""
    settings = setting_variables()
    given: dict[str, set[str]] = {"Dockerfile ENV": set(dockerfile().env())}
    services = compose()["services"]
    given |= {f"compose {s}": set(services[s]["environment"]) for s in APP_SERVICES}
    given["env.example"] = set(env_example()) - {"POSTGRES_PASSWORD"}  # compose's own
    objects = kinds()
    given["ConfigMap"] = set(objects["ConfigMap/trialbridge-config"]["data"])
    given["Secret example"] = set(objects["Secret/trialbridge-secrets"]["stringData"])
    for workload, container in app_containers().items():
        given[workload] = {e["name"] for e in container.get("env", [])}
    unknown = {
        where: sorted(names - settings - OTHER_PROCESS_VARIABLES)
        for where, names in given.items()
        if names - settings - OTHER_PROCESS_VARIABLES
    }
    assert unknown == {}


def compose_environments() -> dict[str, dict[str, str]]:
    """Each app service's environment, interpolated from env.example, over the image's ENV."""
    variables = env_example()
    base = dockerfile().env()
    services = compose()["services"]
    return {
        s: base
        | {k: interpolated(str(v), variables) for k, v in services[s]["environment"].items()}
        for s in APP_SERVICES
    }


def kubernetes_environments() -> dict[str, dict[str, str]]:
    """Each workload's environment: the image's ENV, then envFrom, then env."""
    objects = kinds()
    sources = {
        "configMapRef": objects["ConfigMap/trialbridge-config"]["data"],
        "secretRef": objects["Secret/trialbridge-secrets"]["stringData"],
    }
    found = {}
    for workload, container in app_containers().items():
        env = dockerfile().env()
        for source in container["envFrom"]:
            [(kind, ref)] = source.items()
            assert ref["name"] == {"configMapRef": "trialbridge-config"}.get(
                kind, "trialbridge-secrets"
            )
            env |= sources[kind]
        env |= {e["name"]: e["value"] for e in container.get("env", [])}
        found[workload] = env
    return found


def test_each_process_gets_the_settings_its_role_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    roles = {
        "api": ["compose api", "Deployment/trialbridge-api"],
        "deliverer": ["compose deliverer", "Deployment/trialbridge-deliverer"],
        "worker": ["compose worker", "Deployment/trialbridge-worker"],
        "job": ["compose migrate", "Job/trialbridge-migrate", "CronJob/trialbridge-reevaluate"],
    }
    environments = {f"compose {k}": v for k, v in compose_environments().items()}
    environments |= kubernetes_environments()
    assert sorted(environments) == sorted(w for ws in roles.values() for w in ws)
    made = {where: settings_from(env, monkeypatch) for where, env in environments.items()}
    for where, settings in made.items():
        assert settings.database_url.startswith("postgresql+psycopg://"), where
        assert settings.auto_migrate is False, where  # migrating is the release step
        assert settings.auth_disabled is False, where
        assert str(settings.base_url).startswith("https://"), where
    for where in roles["api"]:  # the servers leave delivery to the deliverer
        assert made[where].webhook_interval_seconds == 0, where
    for where in roles["deliverer"]:
        assert made[where].webhook_interval_seconds > 0, where
    for api, worker in zip(roles["api"], roles["worker"], strict=True):
        # the API spools asynchronous $import bodies in the database, where any worker reads them
        assert made[api].spools_in_database(), api
        assert made[worker].spools_in_database(), worker
        assert made[worker].jobs_in_process() is False, worker


def test_read_only_roots_have_a_writable_place_for_what_each_process_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MPLCONFIGDIR for every process (matplotlib refuses to start without one), the audit
    journal for the servers; in compose the journal's volume is a named, persistent one."""
    workdir = dockerfile().one("WORKDIR")
    services = compose()["services"]
    named = set(compose()["volumes"])
    for service, env in compose_environments().items():
        spec = services[service]
        assert spec["read_only"] is True, service
        tmpfs = {t.split(":", 1)[0] for t in spec["tmpfs"]}
        volumes = {v.split(":")[1]: v.split(":")[0] for v in spec.get("volumes", [])}
        assert under(env["MPLCONFIGDIR"], tmpfs | set(volumes)), service
        if service == "api":
            spool = absolute(settings_from(env, monkeypatch).spool_dir(), workdir)
            [volume] = [v for m, v in volumes.items() if under(spool, {m})]
            assert volume in named, service
    for workload, env in kubernetes_environments().items():
        pod = pod_spec(workloads()[workload])
        [container] = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, workload
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty}
        assert under(env["MPLCONFIGDIR"], mounts), workload
        if workload == "Deployment/trialbridge-api":
            spool = absolute(settings_from(env, monkeypatch).spool_dir(), workdir)
            assert under(spool, mounts), workload


def test_pods_run_as_the_image_s_user_with_nothing_more() -> None:
    uid, gid = (int(n) for n in dockerfile().one("USER").split(":"))
    for workload, obj in workloads().items():
        pod = pod_spec(obj)
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, workload
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        assert pod["automountServiceAccountToken"] is False, workload
        # a Service named `trialbridge` would otherwise put TRIALBRIDGE_PORT=tcp://… and the
        # like into the environment, where the settings look for their variables
        assert pod["enableServiceLinks"] is False, workload
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, workload
            assert {"cpu", "memory"} == set(container["resources"]["requests"]), workload
            assert {"cpu", "memory"} == set(container["resources"]["limits"]), workload
    for service in APP_SERVICES:
        spec = compose()["services"][service]
        assert spec["cap_drop"] == ["ALL"], service
        assert spec["security_opt"] == ["no-new-privileges:true"], service


def test_images_are_this_release() -> None:
    images = {w: c["image"] for w, c in app_containers().items()}
    assert set(images.values()) == {f"trialbridge:{VERSION}"}
    services = compose()["services"]
    assert {services[s]["image"] for s in APP_SERVICES} == {f"trialbridge:{VERSION}"}


def test_compose_runs_the_migration_first_and_once() -> None:
    services = compose()["services"]
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for service in ("api", "deliverer"):
        assert services[service]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    # the image's HEALTHCHECK polls the HTTP port: only the API has one
    assert services["migrate"]["healthcheck"] == {"disable": True}
    assert services["deliverer"]["healthcheck"] == {"disable": True}


def test_no_secret_is_written_into_the_deploy_files() -> None:
    """Passwords come from deploy/.env (compose) or a Secret made outside git (Kubernetes)."""
    database = compose_environments()["api"]["DATABASE_URL"]
    assert database == (
        f"postgresql://trialbridge:{env_example()['POSTGRES_PASSWORD']}@db:5432/trialbridge"
    )
    raw = compose()["x-environment"]["DATABASE_URL"]
    assert "${POSTGRES_PASSWORD:?" in raw
    assert compose()["services"]["db"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert "DATABASE_URL" not in kinds()["ConfigMap/trialbridge-config"]["data"]
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().split()
