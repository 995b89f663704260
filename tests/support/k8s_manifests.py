"""The Kubernetes manifests of deploy/k8s as data: every document, every workload's pod template,
and an evaluator of NetworkPolicies (Kubernetes' semantics) over those templates' own labels.

The evaluator follows networking.k8s.io/v1: a pod that no policy of a direction selects is open
in that direction; a selected pod lets through only what some rule of a selecting policy lets
through, and a connection needs both the source's egress and the target's ingress. It refuses
what it does not model (ipBlock peers, named ports) instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support import REPO as ROOT

K8S_DIR = ROOT / "deploy" / "k8s"
NAMESPACE = "fraudflow"

# kinds that run pods, and where their pod template is
POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
# kinds that run none
PODLESS_KINDS = {
    "Namespace",
    "ConfigMap",
    "Secret",
    "Service",
    "PersistentVolumeClaim",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ServiceAccount",
}


def documents(paths: list[Path] | None = None) -> list[dict]:
    paths = sorted(K8S_DIR.glob("*.yaml")) if paths is None else paths
    return [d for path in paths for d in yaml.safe_load_all(path.read_text()) if d]


def pod_templates(docs: list[dict]) -> dict[str, dict]:
    """Workload name -> its pod template ({metadata, spec}); every kind must be a known one, so a
    new kind of workload cannot slip past the checks that read pod templates."""
    templates = {}
    for doc in docs:
        kind = doc["kind"]
        if kind in PODLESS_KINDS:
            continue
        assert kind in POD_TEMPLATE_PATHS or kind == "Pod", f"unknown kind {kind}"
        template = doc
        for key in POD_TEMPLATE_PATHS.get(kind, ()):
            template = template[key]
        name = doc["metadata"]["name"]
        assert name not in templates, f"two workloads named {name}"
        templates[name] = template
    return templates


@dataclass(frozen=True)
class Endpoint:
    """Something that opens or takes connections: a pod (namespace and labels), or a host outside
    the cluster (namespace None: a managed database, a client on the internet)."""

    name: str
    namespace: str | None
    labels: dict = field(default_factory=dict, hash=False, compare=False)


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions; {} selects everything)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In":
            ok = key in labels and labels[key] in values
        elif operator == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif operator == "Exists":
            ok = key in labels
        elif operator == "DoesNotExist":
            ok = key not in labels
        else:
            raise ValueError(f"unknown selector operator {operator}")
        if not ok:
            return False
    return True


class NetworkModel:
    """The namespaces (name -> labels) and the policies in force."""

    def __init__(self, policies: list[dict], namespaces: dict[str, dict]) -> None:
        self.policies = policies
        self.namespaces = namespaces
        for policy in policies:
            spec = policy["spec"]
            for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
                for peer in (rule.get("from") or []) + (rule.get("to") or []):
                    assert "ipBlock" not in peer, "ipBlock peers are not modelled"
                for port in rule.get("ports") or []:
                    assert not isinstance(port.get("port"), str), "named ports are not modelled"

    @staticmethod
    def policy_types(policy: dict) -> list[str]:
        spec = policy["spec"]
        default = ["Ingress"] + (["Egress"] if "egress" in spec else [])
        return spec.get("policyTypes") or default

    def selected_by(self, endpoint: Endpoint) -> list[dict]:
        return [
            p
            for p in self.policies
            if endpoint.namespace == p["metadata"].get("namespace", "default")
            and selects(p["spec"]["podSelector"], endpoint.labels)
        ]

    def peer_matches(self, peer: dict, policy_namespace: str, endpoint: Endpoint) -> bool:
        if endpoint.namespace is None:  # outside the cluster: only ipBlock (refused) reaches it
            return False
        if "namespaceSelector" in peer:
            namespace_labels = self.namespaces[endpoint.namespace]
            if not selects(peer["namespaceSelector"], namespace_labels):
                return False
        elif endpoint.namespace != policy_namespace:
            return False
        return selects(peer.get("podSelector") or {}, endpoint.labels)

    @staticmethod
    def port_matches(ports: list[dict] | None, protocol: str, port: int) -> bool:
        if not ports:
            return True
        for entry in ports:
            if entry.get("protocol", "TCP") != protocol:
                continue
            if "port" not in entry:
                return True
            if entry["port"] <= port <= entry.get("endPort", entry["port"]):
                return True
        return False

    def _one_way(self, pod: Endpoint, other: Endpoint, kind: str, protocol: str, port: int) -> bool:
        rules_key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
        selecting = [p for p in self.selected_by(pod) if kind in self.policy_types(p)]
        if not selecting:
            return True
        return any(
            (
                not rule.get(peers_key)
                or any(
                    self.peer_matches(peer, policy["metadata"]["namespace"], other)
                    for peer in rule[peers_key]
                )
            )
            and self.port_matches(rule.get("ports"), protocol, port)
            for policy in selecting
            for rule in policy["spec"].get(rules_key) or []
        )

    def allows(self, source: Endpoint, target: Endpoint, protocol: str, port: int) -> bool:
        return self._one_way(source, target, "Egress", protocol, port) and self._one_way(
            target, source, "Ingress", protocol, port
        )

    def dead_selectors(self, endpoints: list[Endpoint]) -> list[str]:
        """Every selector of every policy that selects none of the endpoints (a policy that
        protects nothing, a rule that lets nothing through): where a label was misspelt."""
        dead = []
        for policy in self.policies:
            name, namespace = policy["metadata"]["name"], policy["metadata"]["namespace"]
            spec = policy["spec"]
            if not any(selects(spec["podSelector"], e.labels) for e in endpoints if e.namespace):
                dead.append(f"{name}: podSelector {spec['podSelector']}")
            for key, peers_key in (("ingress", "from"), ("egress", "to")):
                for rule in spec.get(key) or []:
                    for peer in rule.get(peers_key) or []:
                        if not any(self.peer_matches(peer, namespace, e) for e in endpoints):
                            dead.append(f"{name}: {key} peer {peer}")
        return dead
