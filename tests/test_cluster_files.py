"""Static checks of the cluster side (cluster/) and the GPU preset (jobs/configs/padchest.yaml).

The files parse and pass the Ray cluster launcher's own validation, keep the security properties cluster/README.md
promises (token auth on every node and container, no dashboard or port open to the world, S3 on one bucket), agree
with each other and with the preset (GPU and CPU budgets, cluster name, Ray version), and hold no credential. Fast:
nothing here starts Ray or touches a network.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from trcgl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
PRESETS = ROOT / "jobs" / "configs"
WORLD = ("0.0.0.0/0", "::/0")


def _docs(name: str) -> list[Any]:
    with open(CLUSTER / name) as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def _aws() -> dict[str, Any]:
    (doc,) = _docs("aws.yaml")
    return doc


def _json(name: str) -> dict[str, Any]:
    return json.loads((CLUSTER / name).read_text())


def _gpu_family(instance_type: str) -> bool:
    """EC2 GPU instance families (g4dn, g5, g6, g6e, p4d, p5, ...)."""
    return re.match(r"^(g\d|p\d)", instance_type) is not None


def _node_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return cfg["available_node_types"]


def _gpu_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _node_types(cfg).items() if v.get("resources", {}).get("GPU", 0) > 0}


def _ray_start_commands(commands: list[str]) -> list[str]:
    return [c for c in commands if "ray start" in c]


# ------------------------------------------------------------------------------------------------ parsing


def test_cluster_files_exist_and_parse():
    names = {p.name for p in CLUSTER.glob("*.yaml")}
    assert {"aws.yaml", "rayjob.yaml", "runtime_env.yaml"} <= names, names
    for name in sorted(names):
        docs = _docs(name)
        assert docs, f"{name} is empty"
        assert all(isinstance(d, dict) for d in docs), f"{name}: every YAML document must be a mapping"
    for path in sorted(CLUSTER.glob("*.json")):
        assert isinstance(json.loads(path.read_text()), dict), path.name


def test_aws_yaml_passes_the_launchers_own_validation():
    """What `ray up` does first: merge the provider's defaults, then validate against Ray's JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(_aws())))


# ------------------------------------------------------------------------------------------------ aws.yaml


def test_aws_gpu_workers_autoscale_from_zero():
    cfg = _aws()
    gpu = _gpu_types(cfg)
    assert gpu, "no worker type declares GPU resources"
    assert cfg["head_node_type"] not in gpu
    for name, node in gpu.items():
        assert node.get("min_workers", 0) == 0, f"{name}: GPU workers must scale from zero (min_workers 0)"
        assert node.get("max_workers", 0) >= 1, f"{name}: GPU workers must be able to scale up"
        assert _gpu_family(node["node_config"]["InstanceType"]), f"{name}: {node['node_config']['InstanceType']}"
    cpu = {
        k: v
        for k, v in _node_types(cfg).items()
        if k != cfg["head_node_type"] and v.get("resources", {}).get("GPU", 0) == 0
    }
    assert cpu, "no CPU worker type for Ray Data ingest"
    assert all(v.get("min_workers", 0) == 0 for v in cpu.values()), "CPU workers must scale from zero too"
    assert cfg["max_workers"] >= max(v["max_workers"] for v in gpu.values()), "global max_workers caps the GPU pool"


def test_aws_head_runs_no_gpu_and_no_tasks():
    cfg = _aws()
    head = _node_types(cfg)[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0, "the head advertises 0 CPUs to the autoscaler"
    assert not _gpu_family(head["node_config"]["InstanceType"])
    (start,) = _ray_start_commands(cfg["head_start_ray_commands"])
    assert "--num-cpus=0" in start, "the head's raylet must advertise 0 CPUs too (as its node type declares)"


def test_aws_token_auth_on_every_node_from_a_mounted_file():
    cfg = _aws()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = _ray_start_commands(cfg[key])
        assert starts, f"{key} starts no Ray"
        for command in starts:
            assert re.search(r"\bRAY_AUTH_MODE=token\s+ray start\b", command), f"{key}: {command!r}"
    mounts = cfg["file_mounts"]
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token", "the token file must be mounted onto the nodes"
    every_command = " ".join(
        c
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands")
        for c in cfg.get(key, [])
    )
    assert "RAY_AUTH_TOKEN=" not in every_command


def test_aws_dashboard_only_on_loopback():
    cfg = _aws()
    (start,) = _ray_start_commands(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in shlex.split(start.replace(";", " "))
    assert "0.0.0.0" not in yaml.safe_dump(cfg), "nothing in the launcher config may bind or open 0.0.0.0"


def _world_open(ip_permissions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ingress rules (EC2 IpPermissions) open to any address."""
    open_rules = []
    for rule in ip_permissions:
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        ]
        if any(cidr in WORLD for cidr in ranges):
            open_rules.append(rule)
    return open_rules


def test_world_open_rule_detector_flags_an_open_rule():
    rule = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert _world_open([rule]) == [rule]
    assert _world_open([{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-1"}]}]) == []


def test_aws_no_ingress_from_the_world():
    cfg = _aws()
    for name, node in _node_types(cfg).items():
        # Without SecurityGroupIds the launcher creates its default group, which opens SSH to 0.0.0.0/0.
        assert node["node_config"].get("SecurityGroupIds"), f"{name}: name your own security group"
    assert _world_open(cfg["provider"].get("security_group", {}).get("IpPermissions", [])) == []
    # The README's commands that create the group: SSH only, from one CIDR.
    readme = (CLUSTER / "README.md").read_text().replace("\\\n", " ")
    rules = [line for line in readme.splitlines() if "authorize-security-group-ingress" in line]
    assert rules, "README shows no security-group rules"
    for line in rules:
        args = shlex.split(line)
        if "--cidr" in args:
            assert args[args.index("--cidr") + 1] not in WORLD, line
            assert args[args.index("--port") + 1] == "22", f"only SSH may come from outside the group: {line}"
        else:
            assert "--source-group" in args, line


def test_aws_idle_timeout_set():
    idle = _aws().get("idle_timeout_minutes")
    assert isinstance(idle, int) and 1 <= idle <= 60, idle


def test_aws_nodes_use_instance_profiles():
    cfg = _aws()
    profiles = {name: node["node_config"].get("IamInstanceProfile") for name, node in _node_types(cfg).items()}
    assert all(profiles.values()), profiles
    head = profiles[cfg["head_node_type"]]
    assert all(p != head for name, p in profiles.items() if name != cfg["head_node_type"]), (
        "workers must not get the head's profile (it may launch and terminate instances)"
    )


AMI_ID = re.compile(r"^ami-(?:[0-9a-f]{8}|[0-9a-f]{17}|CHANGE-ME)$")  # a literal id, or the placeholder to replace


@pytest.mark.parametrize("image", ["latest_dlami", "", "ami-", "resolve:ssm:/aws/service/x", "ami-XYZ", None])
def test_ami_check_rejects_what_is_not_a_literal_id(image):
    assert not AMI_ID.match(str(image))


def test_aws_every_node_runs_one_pinned_image():
    """`latest_dlami` is Ray 2.60's Ubuntu 18.04 image (glibc 2.27): our torch wheels do not install there."""
    images = {name: node["node_config"].get("ImageId") for name, node in _node_types(_aws()).items()}
    for name, image in images.items():
        assert isinstance(image, str) and AMI_ID.match(image), f"{name}: ImageId {image!r} is not a literal ami- id"
    assert len(set(images.values())) == 1, images


# ------------------------------------------------------------------------------------------------ IAM


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_bucket_policy_is_one_bucket_and_objects_only():
    statements = _statements(_json("iam-policy.json"))
    actions = {a for s in statements for a in _as_list(s["Action"])}
    resources = {r for s in statements for r in _as_list(s["Resource"])}
    assert all(s["Effect"] == "Allow" for s in statements)
    assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions
    buckets = {re.sub(r"/\*$", "", r) for r in resources}
    assert len(buckets) == 1 and all(b.startswith("arn:aws:s3:::") and "*" not in b for b in buckets), resources
    (bucket,) = buckets
    assert resources <= {bucket, f"{bucket}/*"}, resources
    for s in statements:
        if "s3:ListBucket" in _as_list(s["Action"]):
            assert _as_list(s["Resource"]) == [bucket]


def test_head_policy_manages_only_this_clusters_workers():
    statements = _statements(_json("iam-head-policy.json"))
    actions = {a for s in statements for a in _as_list(s["Action"])}
    assert "*" not in actions and not any(a.startswith("s3:") for a in actions), actions
    assert "ec2:RunInstances" in actions and "ec2:TerminateInstances" in actions
    cluster_name = _aws()["cluster_name"]
    for s in statements:
        acts = _as_list(s["Action"])
        if "ec2:TerminateInstances" in acts:
            assert s["Condition"]["StringEquals"]["ec2:ResourceTag/ray-cluster-name"] == cluster_name
        if "iam:PassRole" in acts:
            assert all(r.endswith(":role/trcgl-ray-worker") for r in _as_list(s["Resource"])), s


def test_head_policy_launches_only_the_worker_types_with_the_cluster_tag():
    """The head launches workers only (`ray up` launches the head with your own credentials)."""
    cfg = _aws()
    workers = {
        n["node_config"]["InstanceType"] for name, n in _node_types(cfg).items() if name != cfg["head_node_type"]
    }
    launches = [s for s in _statements(_json("iam-head-policy.json")) if "ec2:RunInstances" in _as_list(s["Action"])]
    assert all(s["Effect"] == "Allow" and "*" not in _as_list(s["Resource"]) for s in launches), launches
    region = cfg["provider"]["region"]
    for s in launches:
        assert all(r.split(":")[3] == region for r in _as_list(s["Resource"])), s
    on_instances = [s for s in launches if any(":instance/" in r for r in _as_list(s["Resource"]))]
    assert len(on_instances) == 1, "one statement must allow launching instances"
    (instance,) = on_instances
    assert _as_list(instance["Resource"]) == [f"arn:aws:ec2:{region}:ACCOUNT_ID:instance/*"]
    equals = instance["Condition"]["StringEquals"]
    assert set(_as_list(equals["ec2:InstanceType"])) == workers, (equals["ec2:InstanceType"], workers)
    assert equals["aws:RequestTag/ray-cluster-name"] == cfg["cluster_name"]
    tagging = [s for s in _statements(_json("iam-head-policy.json")) if "ec2:CreateTags" in _as_list(s["Action"])]
    at_launch = [s for s in tagging if "ec2:CreateAction" in s["Condition"]["StringEquals"]]
    assert at_launch, "the autoscaler tags its instances in the RunInstances call: CreateTags on launch is needed"
    for s in at_launch:
        assert s["Condition"]["StringEquals"]["aws:RequestTag/ray-cluster-name"] == cfg["cluster_name"]


# ------------------------------------------------------------------------------------------------ rayjob.yaml


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def _rayjob() -> dict[str, Any]:
    (job,) = _kind(_docs("rayjob.yaml"), "RayJob")
    return job


def _gpus(container: dict[str, Any]) -> int:
    """GPUs a container gets: Kubernetes grants extended resources by limits (requests, if any, must equal them)."""
    res = container.get("resources", {})
    limit = int(res.get("limits", {}).get("nvidia.com/gpu", 0))
    assert int(res.get("requests", {}).get("nvidia.com/gpu", limit)) == limit, container.get("name")
    return limit


def _cpus(container: dict[str, Any]) -> float:
    cpu = str(container["resources"]["limits"]["cpu"])
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def _pyproject_ray_version() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins no ray version"
    return match.group(1)


def test_rayjob_runs_the_pipeline_and_cleans_up():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert "jobs.pipeline" in spec["entrypoint"] and "ray.autoscaling=true" in spec["entrypoint"]
    assert "storage.root=s3://" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == _pyproject_ray_version()


def test_rayjob_head_has_no_gpu_and_no_task_cpus():
    head = _rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert all(_gpus(c) == 0 for c in head["template"]["spec"]["containers"])
    assert head["rayStartParams"].get("dashboard-host", "") != "0.0.0.0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "the head Service must not leave the cluster"
    assert not head.get("enableIngress", False)


def test_rayjob_worker_groups_scale_from_zero():
    groups = _rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu = [g for g in groups if any(_gpus(c) >= 1 for c in g["template"]["spec"]["containers"])]
    cpu = [g for g in groups if g not in gpu]
    assert gpu, "no worker group asks for nvidia.com/gpu"
    assert cpu, "no CPU worker group for ingest"
    for g in groups:
        assert g["minReplicas"] == 0 and g.get("replicas", 0) == 0, g["groupName"]
        assert g["maxReplicas"] >= 1, g["groupName"]


def _all_containers(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    out = [("head", c) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for g in cluster["workerGroupSpecs"]:
        out += [(g["groupName"], c) for c in g["template"]["spec"]["containers"]]
    out += [("submitter", c) for c in spec.get("submitterPodTemplate", {}).get("spec", {}).get("containers", [])]
    return out


def test_rayjob_autoscaler_env_is_not_duplicated():
    """KubeRay gives the autoscaler container both auth variables from authOptions, then appends
    autoscalerOptions.env: the same variables there would be a second copy."""
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token" and cluster["authOptions"]["secretName"]
    names = {e["name"] for e in cluster.get("autoscalerOptions", {}).get("env", [])}
    assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, names


def test_rayjob_token_auth_on_every_container_from_a_secret():
    job = _rayjob()
    auth = job["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token"
    containers = _all_containers(job)
    assert {"head", "submitter"} <= {where for where, _ in containers}
    for where, container in containers:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
        token = env.get("RAY_AUTH_TOKEN", {})
        assert "value" not in token, f"{where}: the token must never be a literal"
        ref = token.get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"{where}: RAY_AUTH_TOKEN must come from a Secret"
        assert ref["name"] == auth["secretName"], f"{where}: a different Secret than authOptions names"
    assert not _kind(_docs("rayjob.yaml"), "Secret"), "the token Secret is created from a file, never in YAML"


def test_rayjob_s3_through_irsa():
    accounts = {a["metadata"]["name"]: a for a in _kind(_docs("rayjob.yaml"), "ServiceAccount")}
    for account in accounts.values():
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for t in templates:
        assert t["spec"]["serviceAccountName"] in accounts, "every Ray pod gets S3 from an IRSA ServiceAccount"
    for _, container in _all_containers(_rayjob()):
        names = {e["name"] for e in container.get("env", [])}
        assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}, names


def test_rayjob_workers_do_not_hold_the_autoscalers_service_account():
    """KubeRay binds the autoscaler's Role (patch pods and RayClusters) to the head pod's ServiceAccount: a worker
    pod (where every task runs) with that account, and its token mounted, could do the same."""
    accounts = {a["metadata"]["name"]: a for a in _kind(_docs("rayjob.yaml"), "ServiceAccount")}
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    head_account = cluster["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    for g in cluster["workerGroupSpecs"]:
        spec = g["template"]["spec"]
        account = spec.get("serviceAccountName", "default")
        assert account != head_account, f"{g['groupName']}: shares the head's (autoscaler's) ServiceAccount"
        by_account = accounts.get(account, {}).get("automountServiceAccountToken")
        mounted = spec.get("automountServiceAccountToken", by_account)  # the pod's setting wins over the account's
        assert mounted is False, f"{g['groupName']}: the Kubernetes API token must not be mounted on workers"


def test_rayjob_network_policy_admits_only_the_cluster_and_the_operator():
    docs = _docs("rayjob.yaml")
    (policy,) = _kind(docs, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for t in templates:
        labels = t["metadata"]["labels"]
        assert selector.items() <= labels.items(), "the NetworkPolicy must select every Ray pod"
    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"]["ingress"]:
        sources = rule.get("from")
        assert sources, "an ingress rule without `from` admits every source"
        for source in sources:
            assert source.get("ipBlock", {}).get("cidr") not in WORLD, source


# ------------------------------------------------------------------------------------------------ runtime env


def test_runtime_env_ships_the_code_and_nothing_else():
    from ray._private.runtime_env.packaging import _get_excludes

    (env,) = _docs("runtime_env.yaml")
    assert not {"pip", "conda", "uv"} & env.keys(), "dependencies are on the nodes; a pip list reinstalls torch"
    for key, value in env.get("env_vars", {}).items():
        assert isinstance(value, str), key
        assert not re.search(r"(^|_)(TOKEN|SECRET|PASSWORD|CREDENTIALS?|KEY)(_|$)", key, re.I), key
    excluded = _get_excludes(ROOT, env["excludes"])
    code = [p for d in ("trcgl", "jobs") for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")]
    assert code and not [str(p) for p in code if excluded(p)], "an exclude pattern drops package code"
    for junk in ("runs/demo/classifier/metrics.json", "tests/test_config.py", ".git/HEAD", "data/padchest/x.png"):
        assert excluded(ROOT / junk), f"{junk} would be uploaded with every job"


def _documented_downloads() -> list[str]:
    """The --download destinations the docs show (README.md, cluster/README.md, jobs/results.py)."""
    texts = [(ROOT / p).read_text() for p in ("README.md", "cluster/README.md", "jobs/results.py")]
    return sorted({m for t in texts for m in re.findall(r"--download\s+(\./[^\s`]+)", t)})


def test_runtime_env_excludes_downloaded_reports():
    """A report downloaded into the working directory would otherwise travel with every later job."""
    from ray._private.runtime_env.packaging import _get_excludes

    (env,) = _docs("runtime_env.yaml")
    excluded = _get_excludes(ROOT, env["excludes"])
    downloads = _documented_downloads()
    assert "./padchest-report" in downloads and "./demo-report" in downloads, downloads
    for dest in downloads:
        assert excluded(ROOT / dest / "report.html"), f"{dest} would be uploaded with every later job"
    assert not excluded(ROOT / "trcgl" / "results.py")


def _submit_commands(text: str) -> list[list[str]]:
    joined = text.replace("\\\n", " ")
    starts = re.compile(r"^\s*(?:RAY_AUTH_MODE=token\s+)?ray job submit\b")  # commands in code blocks
    return [shlex.split(line) for line in joined.splitlines() if starts.match(line)]


def test_submit_commands_set_the_working_dir_once():
    """runtime_env.yaml sets working_dir; --working-dir beside it would override it (Ray warns) and say it twice."""
    (env,) = _docs("runtime_env.yaml")
    assert env["working_dir"] == "."
    commands = [c for p in ("README.md", "cluster/README.md") for c in _submit_commands((ROOT / p).read_text())]
    with_env = [c for c in commands if "--runtime-env" in c]
    assert len(with_env) >= 3, "README.md and cluster/README.md show the cluster submit commands"
    for command in with_env:
        assert "--working-dir" not in command, " ".join(command)


# ------------------------------------------------------------------------------------------------ credentials


CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "aws_secret_access_key": re.compile(r"aws_secret_access_key", re.IGNORECASE),
    "secret_access_key with a value": re.compile(r"secret_access_key\s*[:=]\s*['\"]?[^\s'\"#]{8,}", re.IGNORECASE),
    "literal RAY_AUTH_TOKEN": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?(?![$'\"\s{])\S+"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "bearer token": re.compile(r"Bearer\s+[A-Za-z0-9._~+/-]{20,}"),
}


def find_credentials(text: str) -> list[str]:
    """Names of the credential patterns found in ``text``."""
    return [name for name, pattern in CREDENTIAL_PATTERNS.items() if pattern.search(text)]


@pytest.mark.parametrize(
    "text",
    [
        "aws_access_key_id: " + "AKIA" + "ABCDEFGHIJKLMNOP",
        "AWS_SECRET_ACCESS_KEY=abc",
        "  secret_access_key: " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "RAY_AUTH_TOKEN=" + "3f9a0c1d2e3f4a5b",
        "env:\n  RAY_AUTH_TOKEN: '" + "3f9a0c1d2e3f4a5b'",
        "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIE...",
        "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
        "x-ray-authorization: Bearer " + "0123456789abcdef0123456789abcdef",
    ],
)
def test_credential_scanner_flags_a_fake_secret(text):
    assert find_credentials(text), f"the scanner missed {text!r}"


@pytest.mark.parametrize(
    "text",
    [
        "- name: RAY_AUTH_TOKEN\n  valueFrom:\n    secretKeyRef: {name: t, key: auth_token}",
        'export RAY_AUTH_TOKEN="$(cat ~/.ray/auth_token)"',
        "RAY_AUTH_MODE=token ray start --head",
        "storage:\n  root: s3://CHANGE-ME/trcgl",
    ],
)
def test_credential_scanner_passes_references(text):
    assert find_credentials(text) == []


def test_no_credentials_in_cluster_files_or_presets():
    files = [p for d in (CLUSTER, PRESETS) for p in sorted(d.rglob("*")) if p.is_file()]
    assert any(p.parent == CLUSTER for p in files) and any(p.parent == PRESETS for p in files)
    found = {str(p.relative_to(ROOT)): hits for p in files if (hits := find_credentials(p.read_text()))}
    assert found == {}


# ------------------------------------------------------------------------------------------------ padchest preset


def test_padchest_preset_is_the_gpu_cluster_preset():
    cfg = load_config("padchest", ["data.images=/data/padchest"])
    assert cfg.data.source == "padchest"
    assert cfg.train.use_gpu is True
    assert cfg.generate.num_gpus >= 1
    assert cfg.storage.root.startswith("s3://")
    assert cfg.ray.autoscaling is True, "GPU nodes come from the autoscaler: jobs must wait for them"


def test_padchest_paths_are_parameters():
    raw = yaml.safe_load((PRESETS / "padchest.yaml").read_text())
    assert "images" in raw["data"] and raw["data"]["images"] is None, "data.images must be a parameter (null)"
    assert load_config("padchest").data.images is None
    cfg = load_config("padchest")
    paths = {
        "storage.root": cfg.storage.root,
        "data.metadata": cfg.data.metadata,
        "data.images": cfg.data.images,
        "model.pretrained": cfg.model.pretrained,
        "diffusion.pretrained": cfg.diffusion.pretrained,
        "diffusion.text_encoder": cfg.diffusion.text_encoder,
        "generate.model": cfg.generate.model,
    }
    fixed = {k: v for k, v in paths.items() if v is not None and "CHANGE-ME" not in v}
    assert fixed == {}, "a path in the preset is neither null nor a CHANGE-ME placeholder"


def _gpu_node_shapes() -> list[tuple[str, float, float, int]]:
    """(where, CPUs, GPUs, most nodes) of every GPU node type in aws.yaml and GPU worker group in rayjob.yaml."""
    shapes = [
        (f"aws.yaml {name}", n["resources"]["CPU"], n["resources"]["GPU"], n["max_workers"])
        for name, n in _gpu_types(_aws()).items()
    ]
    for g in _rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        for c in g["template"]["spec"]["containers"]:
            if _gpus(c) >= 1:
                shapes.append((f"rayjob.yaml {g['groupName']}", _cpus(c), _gpus(c), g["maxReplicas"]))
    return shapes


def test_padchest_preset_fits_the_cluster():
    """Train workers and actors fit one GPU node with a CPU left for Ray Data; the pools fit the node limits."""
    cfg = load_config("padchest", ["data.images=/data/padchest"])
    shapes = _gpu_node_shapes()
    assert {where.split()[0] for where, *_ in shapes} == {"aws.yaml", "rayjob.yaml"}
    for where, cpus, gpus, most in shapes:
        assert cfg.train.cpus_per_worker + 1 <= cpus, f"{where}: a train worker must leave a CPU for Ray Data"
        assert cfg.generate.cpus_per_actor + 1 <= cpus, where
        assert cfg.train.gpus_per_worker <= gpus and cfg.generate.num_gpus <= gpus, where
        assert cfg.train.num_workers * cfg.train.gpus_per_worker <= gpus * most, f"{where}: too few GPU nodes"
        assert cfg.generate.actors_max * cfg.generate.num_gpus <= gpus * most, f"{where}: too few GPU nodes"


def test_strict_spread_beyond_the_local_clusters_nodes_fails_fast(monkeypatch):
    """``train.placement_strategy=STRICT_SPREAD`` puts each Train worker on a node of its own: with more workers than
    the autoscaler's node types can ever hold (cluster/local-autoscaling.yaml: 2 gpu_worker nodes of 1 GPU) the
    placement group would wait forever, so it fails at once, naming the key; within them, or packed, it passes."""
    from trcgl.config import ConfigError
    from trcgl.ray_runtime import CONFIG_ENV, check_spread

    monkeypatch.setenv(CONFIG_ENV, str(CLUSTER / "local-autoscaling.yaml"))
    gpu_worker = {"CPU": 0.45, "GPU": 1.0}
    with pytest.raises(ConfigError, match=r"'train.placement_strategy' is STRICT_SPREAD .* 3 workers .* only 2 nodes"):
        check_spread("STRICT_SPREAD", 3, gpu_worker, True, "train.placement_strategy")
    check_spread("STRICT_SPREAD", 2, gpu_worker, True, "train.placement_strategy")
    check_spread("PACK", 3, gpu_worker, True, "train.placement_strategy")  # other strategies: the autoscaler's call
    # CPU-only workers fit the gpu_worker and cpu_worker types (2 + 1 nodes); the head advertises no CPU
    check_spread("STRICT_SPREAD", 3, {"CPU": 0.45}, True, "train.placement_strategy")
    with pytest.raises(ConfigError, match="only 3 nodes"):
        check_spread("STRICT_SPREAD", 4, {"CPU": 0.45}, True, "train.placement_strategy")
