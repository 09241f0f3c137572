#!/usr/bin/env python3
"""Writes crds.yaml and install.yaml: "observa", a made-up monitoring and certificate stack
shaped like the real ones (large multi-version CRDs, custom resources, RBAC with `system:`
names, an APIService, webhooks, workloads, a List and a ConfigMapList).

Everything here is written for Flotilla's tests; nothing is copied from another project. The
generated YAML is committed, so tests need no generator: rerun this after editing it.
Every namespace, group and cluster-scoped name contains the token "observa", so a test can
make a unique copy of the install by replacing that one word.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
NS = "observa"
MON = "monitoring.observa.example"
CERTS = "certs.observa.example"


def doc(obj):
    # JSON is YAML; one object per line keeps diffs readable and parsing unambiguous.
    return json.dumps(obj, sort_keys=False)


def described(text, schema):
    return {"description": text, **schema}


def string(text):
    return described(text, {"type": "string"})


def integer(text, fmt="int32"):
    return described(text, {"type": "integer", "format": fmt})


def boolean(text):
    return described(text, {"type": "boolean"})


def int_or_string(text):
    return described(text, {"x-kubernetes-int-or-string": True})


def strings(text):
    return described(text, {"type": "array", "items": {"type": "string"}})


def string_map(text):
    return described(text, {"type": "object", "additionalProperties": {"type": "string"}})


def obj(text, props, required=None):
    out = {"description": text, "type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def array(text, items, keys=None):
    out = {"description": text, "type": "array", "items": items}
    if keys:
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = keys
    return out


def long(what):
    return (
        f"{what}. The operator reads this field on every reconcile and converges the managed "
        "objects towards it; changing it rolls the affected pods one at a time, respecting the "
        "disruption budget. When unset, the operator's documented default applies, which is "
        "chosen to be safe for a small cluster and should be raised for production use."
    )


def key_ref(what):
    return obj(
        long(f"Selects a key of a {what}"),
        {
            "name": string(long(f"Name of the {what} in the object's namespace")),
            "key": string(long(f"The key of the {what} to select")),
            "optional": boolean(long(f"Whether the {what} or its key may be missing")),
        },
        ["key"],
    )


def probe():
    return obj(
        long("A health check the kubelet runs against the container"),
        {
            "httpGet": obj(
                long("An HTTP GET request the check performs"),
                {
                    "path": string(long("Path to request on the HTTP server")),
                    "port": int_or_string(long("Number or name of the port to connect to")),
                    "scheme": string(long("Scheme to use for connecting to the host")),
                    "httpHeaders": array(
                        long("Custom headers to set in the request"),
                        obj("A header.", {"name": string("Header name."), "value": string("Header value.")}, ["name", "value"]),
                    ),
                },
                ["port"],
            ),
            "tcpSocket": obj(long("A TCP connection the check opens"), {"port": int_or_string(long("Port to connect to"))}, ["port"]),
            "exec": obj(long("A command the check runs in the container"), {"command": strings(long("Command line to execute"))}),
            "initialDelaySeconds": integer(long("Seconds after the container has started before the check runs")),
            "periodSeconds": integer(long("How often, in seconds, to perform the check")),
            "timeoutSeconds": integer(long("Seconds after which the check times out")),
            "successThreshold": integer(long("Minimum consecutive successes for the check to pass after failing")),
            "failureThreshold": integer(long("Consecutive failures after which the check fails")),
        },
    )


def resources():
    quantities = described(long("Quantities of compute resources"), {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": True}})
    return obj(long("Compute resources the container needs"), {"limits": quantities, "requests": quantities})


def security_context():
    return obj(
        long("Security options the container runs with"),
        {
            "runAsUser": integer(long("UID to run the entrypoint of the container process"), "int64"),
            "runAsGroup": integer(long("GID to run the entrypoint of the container process"), "int64"),
            "runAsNonRoot": boolean(long("Whether the container must run as a non-root user")),
            "readOnlyRootFilesystem": boolean(long("Whether the container has a read-only root filesystem")),
            "allowPrivilegeEscalation": boolean(long("Whether a process can gain more privileges than its parent")),
            "privileged": boolean(long("Whether the container runs in privileged mode")),
            "capabilities": obj(long("Capabilities to add or drop"), {"add": strings(long("Capabilities to add")), "drop": strings(long("Capabilities to drop"))}),
            "seccompProfile": obj(long("The seccomp options to use"), {"type": string(long("Which kind of seccomp profile")), "localhostProfile": string(long("A profile file on the node"))}, ["type"]),
        },
    )


def container():
    return obj(
        long("A container of the managed pods"),
        {
            "name": string(long("Name of the container, a DNS label unique within the pod")),
            "image": string(long("Container image name")),
            "imagePullPolicy": string(long("When to pull the image")),
            "command": strings(long("Entrypoint array, not run within a shell")),
            "args": strings(long("Arguments to the entrypoint")),
            "workingDir": string(long("The container's working directory")),
            "env": array(
                long("Environment variables to set in the container"),
                obj(
                    long("One environment variable"),
                    {
                        "name": string(long("Name of the environment variable")),
                        "value": string(long("Value of the environment variable")),
                        "valueFrom": obj(
                            long("Source of the environment variable's value"),
                            {"secretKeyRef": key_ref("Secret"), "configMapKeyRef": key_ref("ConfigMap")},
                        ),
                    },
                    ["name"],
                ),
                ["name"],
            ),
            "ports": array(
                long("Ports to expose from the container"),
                obj(
                    long("A network port in a single container"),
                    {
                        "name": string(long("An IANA_SVC_NAME naming the port")),
                        "containerPort": integer(long("Number of the port to expose on the pod's IP address")),
                        "protocol": string(long("Protocol of the port: UDP, TCP or SCTP")),
                    },
                    ["containerPort"],
                ),
                ["containerPort", "protocol"],
            ),
            "resources": resources(),
            "livenessProbe": probe(),
            "readinessProbe": probe(),
            "startupProbe": probe(),
            "securityContext": security_context(),
            "volumeMounts": array(
                long("Volumes to mount into the container's filesystem"),
                obj(
                    long("A mount of a volume"),
                    {
                        "name": string(long("Name of the volume to mount")),
                        "mountPath": string(long("Path within the container to mount the volume at")),
                        "subPath": string(long("Path within the volume to mount instead of its root")),
                        "readOnly": boolean(long("Whether the mount is read-only")),
                    },
                    ["mountPath", "name"],
                ),
                ["mountPath"],
            ),
        },
        ["name"],
    )


def label_selector(what):
    return obj(
        long(f"Selects {what} by label"),
        {
            "matchLabels": string_map(long("Labels the selected objects must have")),
            "matchExpressions": array(
                long("Label requirements, all of which must hold"),
                obj(
                    long("A label requirement"),
                    {"key": string(long("The label key")), "operator": string(long("In, NotIn, Exists or DoesNotExist")), "values": strings(long("Values for In and NotIn"))},
                    ["key", "operator"],
                ),
            ),
        },
    )


def pod_template():
    toleration = obj(
        long("A taint the pods tolerate"),
        {
            "key": string(long("Taint key")),
            "operator": string(long("Exists or Equal")),
            "value": string(long("Taint value")),
            "effect": string(long("Taint effect to match")),
            "tolerationSeconds": integer(long("How long the pod stays bound after the taint appears"), "int64"),
        },
    )
    return {
        "containers": array(long("Containers added to, or overriding, the generated ones"), container()),
        "initContainers": array(long("Init containers run before the main containers"), container()),
        "nodeSelector": string_map(long("Labels a node must have to run the pods")),
        "tolerations": array(long("Taints the pods tolerate"), toleration),
        "priorityClassName": string(long("Priority class of the pods")),
        "serviceAccountName": string(long("Service account the pods run as")),
        "podMetadata": obj(long("Labels and annotations added to the pods"), {"labels": string_map(long("Extra labels")), "annotations": string_map(long("Extra annotations"))}),
        "affinity": described(long("Scheduling constraints of the pods"), {"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
        "volumes": array(long("Volumes the pods can mount"), {"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
        "securityContext": security_context(),
    }


def conditions():
    return array(
        long("The latest observations of the object's state"),
        obj(
            long("One condition"),
            {
                "type": string(long("Type of the condition")),
                "status": string(long("True, False or Unknown")),
                "reason": string(long("Machine-readable reason for the last transition")),
                "message": string(long("Human-readable message about the last transition")),
                "lastTransitionTime": described(long("When the condition last changed"), {"type": "string", "format": "date-time"}),
                "observedGeneration": integer(long("The generation the condition was set for"), "int64"),
            },
            ["type", "status"],
        ),
        ["type"],
    )


def crd(group, kind, plural, scope, spec_props, versions, columns, short=None, categories=None):
    names = {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()}
    if short:
        names["shortNames"] = short
    if categories:
        names["categories"] = categories
    schema = {
        "openAPIV3Schema": obj(
            long(f"{kind} is a resource of the observa stack"),
            {
                "apiVersion": string("APIVersion defines the versioned schema of this representation of an object."),
                "kind": string("Kind is a string value representing the REST resource this object represents."),
                "metadata": {"type": "object"},
                "spec": obj(long(f"The desired state of the {kind}"), spec_props),
                "status": obj(
                    long(f"The observed state of the {kind}"),
                    {"conditions": conditions(), "observedGeneration": integer(long("The generation last reconciled"), "int64")},
                ),
            },
        )
    }
    out_versions = []
    for i, v in enumerate(versions):
        out_versions.append(
            {
                "name": v,
                "served": True,
                "storage": i == len(versions) - 1,
                "deprecated": i < len(versions) - 1,
                "schema": schema,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
            }
        )
        if i < len(versions) - 1:
            out_versions[-1]["deprecationWarning"] = f"{group}/{v} {kind} is deprecated; use {group}/{versions[-1]}"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"app.kubernetes.io/part-of": "observa"}},
        "spec": {"group": group, "names": names, "scope": scope, "versions": out_versions},
    }


def collector_spec():
    return {
        "replicas": integer(long("Number of collector replicas")),
        "image": string(long("Collector image")),
        "version": string(long("Collector version, used to pick flags")),
        "retention": string(long("How long samples are kept, as a duration")),
        "scrapeInterval": string(long("Default interval between scrapes")),
        "evaluationInterval": string(long("Default interval between rule evaluations")),
        "resources": resources(),
        "probeSelector": label_selector("Probes"),
        "ruleSelector": label_selector("AlertRules"),
        "ruleNamespaceSelector": label_selector("namespaces holding AlertRules"),
        "externalLabels": string_map(long("Labels added to every sample sent elsewhere")),
        "storage": obj(
            long("Persistent storage of the collector"),
            {
                "size": int_or_string(long("Requested size of each volume")),
                "storageClassName": string(long("Storage class of the volumes")),
                "accessModes": strings(long("Access modes of the volumes")),
            },
        ),
        "remoteWrite": array(
            long("Remote endpoints samples are sent to"),
            obj(
                long("One remote endpoint"),
                {
                    "url": string(long("URL of the endpoint")),
                    "name": string(long("Name of the endpoint, unique in the list")),
                    "headers": string_map(long("Headers sent with each request")),
                    "basicAuth": obj(long("Basic authentication"), {"username": key_ref("Secret"), "password": key_ref("Secret")}),
                    "tlsConfig": obj(
                        long("TLS settings"),
                        {"ca": key_ref("Secret"), "cert": key_ref("Secret"), "keySecret": key_ref("Secret"), "serverName": string(long("Server name to verify")), "insecureSkipVerify": boolean(long("Whether to skip verification"))},
                    ),
                    "queueConfig": obj(
                        long("Queue tuning"),
                        {k: integer(long(f"The queue's {k}")) for k in ["capacity", "minShards", "maxShards", "maxSamplesPerSend"]},
                    ),
                },
                ["url"],
            ),
        ),
        **pod_template(),
    }


def crds():
    columns_age = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    ready = [{"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}]
    return [
        crd(MON, "Collector", "collectors", "Namespaced", collector_spec(), ["v1alpha1", "v1beta1", "v1"],
            [{"name": "Version", "type": "string", "jsonPath": ".spec.version"}, {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}] + ready + columns_age,
            short=["col"], categories=["observa"]),
        crd(MON, "Alerter", "alerters", "Namespaced",
            {**{k: v for k, v in collector_spec().items() if k not in ("remoteWrite", "probeSelector", "ruleSelector", "ruleNamespaceSelector")},
             "routeSelector": label_selector("alert routes")},
            ["v1beta1", "v1"], ready + columns_age, categories=["observa"]),
        crd(MON, "Probe", "probes", "Namespaced",
            {
                "interval": string(long("Interval between probes")),
                "module": string(long("Prober module to use")),
                "prober": obj(long("Where the prober runs"), {"url": string(long("Address of the prober")), "path": string(long("Path of the probe endpoint")), "scheme": string(long("HTTP or HTTPS"))}, ["url"]),
                "targets": obj(long("What to probe"), {"staticConfig": obj(long("A fixed list of targets"), {"static": strings(long("Target addresses")), "labels": string_map(long("Labels of the targets"))}), "ingress": obj(long("Ingresses to probe"), {"selector": label_selector("Ingresses")})}),
                "relabelings": array(long("Relabelling rules applied to samples"), obj(long("A rule"), {"sourceLabels": strings(long("Labels to read")), "separator": string(long("Separator")), "targetLabel": string(long("Label to write")), "regex": string(long("Regular expression")), "replacement": string(long("Replacement")), "action": string(long("Action"))})),
            },
            ["v1alpha1", "v1"], columns_age, categories=["observa"]),
        crd(MON, "AlertRule", "alertrules", "Namespaced",
            {"groups": array(long("Groups of rules evaluated together"), obj(long("A group"), {
                "name": string(long("Name of the group")),
                "interval": string(long("Evaluation interval of the group")),
                "rules": array(long("The rules"), obj(long("A rule"), {
                    "alert": string(long("Name of the alert")),
                    "record": string(long("Name of the recorded series")),
                    "expr": int_or_string(long("The query to evaluate")),
                    "for": string(long("How long the condition must hold")),
                    "labels": string_map(long("Labels added to the alert")),
                    "annotations": string_map(long("Annotations added to the alert")),
                }, ["expr"])),
            }, ["name"]))},
            ["v1"], columns_age, short=["ar"], categories=["observa"]),
        crd(CERTS, "Issuer", "issuers", "Namespaced", issuer_spec(), ["v1alpha2", "v1"], ready + columns_age, categories=["observa"]),
        crd(CERTS, "ClusterIssuer", "clusterissuers", "Cluster", issuer_spec(), ["v1alpha2", "v1"], ready + columns_age, categories=["observa"]),
        crd(CERTS, "Certificate", "certificates", "Namespaced",
            {
                "secretName": string(long("Secret the signed certificate is written to")),
                "commonName": string(long("Common name of the certificate")),
                "dnsNames": strings(long("DNS subject alternative names")),
                "ipAddresses": strings(long("IP subject alternative names")),
                "duration": string(long("Requested lifetime of the certificate")),
                "renewBefore": string(long("How long before expiry to renew")),
                "usages": strings(long("Key usages requested")),
                "isCA": boolean(long("Whether the certificate is a CA")),
                "issuerRef": obj(long("The issuer that signs the certificate"), {"name": string(long("Issuer name")), "kind": string(long("Issuer or ClusterIssuer")), "group": string(long("Issuer group"))}, ["name"]),
                "privateKey": obj(long("Options of the private key"), {"algorithm": string(long("RSA, ECDSA or Ed25519")), "size": integer(long("Key size in bits")), "rotationPolicy": string(long("Never or Always")), "encoding": string(long("PKCS1 or PKCS8"))}),
                "secretTemplate": obj(long("Labels and annotations of the Secret"), {"labels": string_map(long("Labels")), "annotations": string_map(long("Annotations"))}),
            },
            ["v1alpha2", "v1beta1", "v1"],
            ready + [{"name": "Secret", "type": "string", "jsonPath": ".spec.secretName"}] + columns_age,
            short=["cert", "certs"], categories=["observa"]),
    ]


def issuer_spec():
    return {
        "selfSigned": obj(long("Issue self-signed certificates"), {"crlDistributionPoints": strings(long("CRL distribution points"))}),
        "ca": obj(long("Issue certificates signed by a CA in a Secret"), {"secretName": string(long("Secret holding the CA")), "ocspServers": strings(long("OCSP servers"))}, ["secretName"]),
        "acme": obj(
            long("Issue certificates from an ACME server"),
            {
                "server": string(long("Directory URL of the ACME server")),
                "email": string(long("Account email")),
                "privateKeySecretRef": obj(long("Secret of the account key"), {"name": string(long("Secret name")), "key": string(long("Key in the Secret"))}, ["name"]),
                "solvers": array(long("How challenges are solved"), {"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
            },
            ["server", "privateKeySecretRef"],
        ),
    }


LABELS = {"app.kubernetes.io/part-of": "observa"}


def meta(name, ns=NS, labels=None, **extra):
    m = {"name": name, "labels": {**LABELS, **(labels or {})}}
    if ns:
        m["namespace"] = ns
    m.update(extra)
    return m


def deployment(name, image, replicas=1, ports=(8080,), sa=None):
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name, labels=labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**LABELS, **labels}},
                "spec": {
                    "serviceAccountName": sa or name,
                    "priorityClassName": "observa-critical",
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": name, "image": f"registry.observa.example/{image}",
                        "args": [f"--listen=:{ports[0]}", "--log-format=json"],
                        "ports": [{"name": f"p{p}", "containerPort": p} for p in ports],
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": ports[0]}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    }


def service(name, ports, selector=None, **spec):
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": meta(name),
        "spec": {"selector": {"app.kubernetes.io/name": selector or name}, "ports": [{"name": n, "port": p, "targetPort": t} for n, p, t in ports], **spec},
    }


def sa(name):
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name)}


def cluster_role(name, rules, labels=None, aggregate=None):
    out = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name, ns=None, labels=labels), "rules": rules}
    if aggregate:
        out["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": aggregate}]}
        out["rules"] = []
    return out


def binding(kind, name, role_kind, role, subject, ns=None):
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta(name, ns=ns),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": NS}],
    }


def rule(groups, resources, verbs):
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


READ = ["get", "list", "watch"]
WRITE = READ + ["create", "update", "patch", "delete"]

COMPONENTS = [
    # name, image, replicas, ports
    ("operator", "operator:0.31.2", 1, (8080,)),
    ("metrics-adapter", "metrics-adapter:0.12.0", 2, (6443,)),
    ("state-metrics", "state-metrics:2.13.0", 1, (8080, 8081)),
    ("cert-controller", "cert-controller:1.16.1", 1, (9402,)),
    ("cert-webhook", "cert-webhook:1.16.1", 2, (10250,)),
    ("cert-cainjector", "cert-cainjector:1.16.1", 1, (9402,)),
    ("dashboards", "dashboards:11.3.0", 1, (3000,)),
]


def install():
    out = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {**LABELS, "pod-security.kubernetes.io/enforce": "restricted"}}},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": meta("observa-critical", ns=None), "value": 1000000, "globalDefault": False, "description": "Pods of the observa stack."},
    ]
    out += [sa(n) for n, *_ in COMPONENTS] + [sa("collector"), sa("alerter"), sa("node-exporter")]
    # RBAC: system: names as real stacks use them.
    out += [
        cluster_role("system:observa-aggregated-metrics-reader", [rule([f"metrics.{NS}.example"], ["pods", "nodes"], READ)],
                     labels={"rbac.authorization.k8s.io/aggregate-to-view": "true", "rbac.authorization.k8s.io/aggregate-to-edit": "true", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
        cluster_role("system:observa-metrics-adapter", [rule([""], ["nodes", "nodes/metrics", "pods", "namespaces"], READ)]),
        cluster_role("system:observa:controller:certificates", [rule([CERTS], ["certificates", "certificates/status", "issuers", "clusterissuers"], WRITE), rule([""], ["secrets", "events"], WRITE)]),
        cluster_role("system:observa:controller:issuers", [rule([CERTS], ["issuers", "issuers/status", "clusterissuers", "clusterissuers/status"], WRITE)]),
        cluster_role("system:observa:webhook:subjectaccessreviews", [rule(["authorization.k8s.io"], ["subjectaccessreviews"], ["create"])]),
        cluster_role("system:observa:cainjector", [rule(["admissionregistration.k8s.io"], ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"], READ + ["update", "patch"]), rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], READ + ["update", "patch"])]),
        cluster_role("observa-operator", [rule([MON], ["*"], ["*"]), rule(["apps"], ["statefulsets", "deployments"], WRITE), rule([""], ["configmaps", "secrets", "services", "pods"], WRITE)]),
        cluster_role("observa-collector", [rule([""], ["nodes", "nodes/metrics", "services", "endpoints", "pods"], READ), {"nonResourceURLs": ["/metrics", "/metrics/cadvisor"], "verbs": ["get"]}]),
        cluster_role("observa-state-metrics", [rule(["", "apps", "batch", "policy", "networking.k8s.io"], ["*"], ["list", "watch"])]),
        cluster_role("observa-view", [], aggregate={"observa.example/aggregate-to-view": "true"}),
        cluster_role("observa-view-monitoring", [rule([MON], ["collectors", "alerters", "probes", "alertrules"], READ)], labels={"observa.example/aggregate-to-view": "true"}),
        cluster_role("observa-view-certs", [rule([CERTS], ["certificates", "issuers", "clusterissuers"], READ)], labels={"observa.example/aggregate-to-view": "true"}),
    ]
    out += [
        binding("ClusterRoleBinding", "system:observa-metrics-adapter", "ClusterRole", "system:observa-metrics-adapter", "metrics-adapter"),
        binding("ClusterRoleBinding", "system:observa-metrics-adapter:auth-delegator", "ClusterRole", "system:auth-delegator", "metrics-adapter"),
        binding("ClusterRoleBinding", "system:observa:controller:certificates", "ClusterRole", "system:observa:controller:certificates", "cert-controller"),
        binding("ClusterRoleBinding", "system:observa:controller:issuers", "ClusterRole", "system:observa:controller:issuers", "cert-controller"),
        binding("ClusterRoleBinding", "system:observa:webhook:subjectaccessreviews", "ClusterRole", "system:observa:webhook:subjectaccessreviews", "cert-webhook"),
        binding("ClusterRoleBinding", "system:observa:cainjector", "ClusterRole", "system:observa:cainjector", "cert-cainjector"),
        binding("ClusterRoleBinding", "observa-operator", "ClusterRole", "observa-operator", "operator"),
        binding("ClusterRoleBinding", "observa-collector", "ClusterRole", "observa-collector", "collector"),
        binding("ClusterRoleBinding", "observa-state-metrics", "ClusterRole", "observa-state-metrics", "state-metrics"),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("observa:leader-election"), "rules": [rule(["coordination.k8s.io"], ["leases"], WRITE)]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("observa:webhook:dynamic-serving"), "rules": [rule([""], ["secrets"], WRITE)]},
        binding("RoleBinding", "observa:leader-election", "Role", "observa:leader-election", "cert-controller", ns=NS),
        binding("RoleBinding", "observa:leader-election:cainjector", "Role", "observa:leader-election", "cert-cainjector", ns=NS),
        binding("RoleBinding", "observa:webhook:dynamic-serving", "Role", "observa:webhook:dynamic-serving", "cert-webhook", ns=NS),
        # The extension-apiserver-authentication-reader Role lives in kube-system upstream; bind in our namespace to stay self-contained.
        binding("RoleBinding", "observa-metrics-adapter:auth-reader", "ClusterRole", "observa-view", "metrics-adapter", ns=NS),
    ]
    for name, image, replicas, ports in COMPONENTS:
        out.append(deployment(name, image, replicas, ports))
    out += [
        service("operator", [("http", 8080, 8080)]),
        service("metrics-adapter", [("https", 443, 6443)]),
        service("state-metrics", [("http-metrics", 8080, 8080), ("telemetry", 8081, 8081)], clusterIP="None"),
        service("cert-controller", [("tcp-prometheus-servicemonitor", 9402, 9402)]),
        service("cert-webhook", [("https", 443, 10250)]),
        service("dashboards", [("http", 80, 3000)]),
        service("collector", [("web", 9090, 9090)]),
        service("alerter", [("web", 9093, 9093)]),
        service("node-exporter", [("metrics", 9100, 9100)], clusterIP="None"),
    ]
    out.append({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("node-exporter"),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "node-exporter"}},
            "template": {
                "metadata": {"labels": {**LABELS, "app.kubernetes.io/name": "node-exporter"}},
                "spec": {
                    "serviceAccountName": "node-exporter", "hostNetwork": True, "hostPID": True,
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "node-exporter", "image": "registry.observa.example/node-exporter:1.8.2", "args": ["--path.rootfs=/host/root"], "ports": [{"name": "metrics", "containerPort": 9100}],
                                    "volumeMounts": [{"name": "root", "mountPath": "/host/root", "readOnly": True}]}],
                    "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                },
            },
        },
    })
    for name, port in [("collector-main", 9090), ("alerter-main", 9093)]:
        labels = {"app.kubernetes.io/name": name.split("-")[0]}
        out.append({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta(name, labels=labels),
            "spec": {
                "replicas": 2, "serviceName": name.split("-")[0], "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": {**LABELS, **labels}}, "spec": {"serviceAccountName": name.split("-")[0], "containers": [{"name": "main", "image": f"registry.observa.example/{name.split('-')[0]}:3.0.1", "ports": [{"name": "web", "containerPort": port}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}],
            },
        })
    out += [
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("cert-webhook-ca"), "type": "Opaque", "data": {"ca.crt": "", "tls.crt": "", "tls.key": ""}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("alerter-config"), "type": "Opaque", "stringData": {"alerter.yaml": "route:\n  receiver: default\nreceivers:\n- name: default\n"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("remote-write-credentials"), "type": "kubernetes.io/basic-auth", "data": {"username": "b2JzZXJ2YQ==", "password": "bm90LWEtcmVhbC1wYXNzd29yZA=="}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("operator-config"), "data": {"config.yaml": "logLevel: info\nreconcileWorkers: 4\n"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("cert-controller-config"), "data": {"config.yaml": "enableCertificateOwnerRef: true\n"}},
    ]
    # Dashboards: a ConfigMapList, as generators of dashboard bundles emit them.
    out.append({
        "apiVersion": "v1", "kind": "ConfigMapList",
        "items": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"dashboard-{d}", labels={"observa.example/dashboard": "1"}),
             "data": {f"{d}.json": json.dumps({"title": d.replace("-", " ").title(), "panels": [{"id": i, "type": "timeseries", "title": f"panel {i}", "targets": [{"expr": f"sum(rate({d.replace('-', '_')}_total[5m])) by (pod)"}]} for i in range(1, 9)]})}}
            for d in ["cluster-overview", "nodes", "pods", "workloads", "namespaces", "api-server", "etcd", "scheduler", "kubelet", "network", "storage", "certificates"]
        ],
    })
    # A generic List of mixed kinds.
    out.append({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta("metrics-adapter"), "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "metrics-adapter"}}}},
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta("cert-webhook"), "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "cert-webhook"}}}},
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta("collector-main"), "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "collector"}}}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("collector-rules-index"), "data": {"index": "\n".join(f"rules-{i}" for i in range(8))}},
            {"apiVersion": "v1", "kind": "Service", "metadata": meta("collector-operated"), "spec": {"clusterIP": "None", "selector": {"app.kubernetes.io/name": "collector"}, "ports": [{"name": "web", "port": 9090, "targetPort": 9090}]}},
        ],
    })
    out += [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("default-deny"), "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("cert-webhook"), "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "cert-webhook"}}, "ingress": [{"ports": [{"port": 10250, "protocol": "TCP"}]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("collector"), "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "collector"}}, "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 9090}]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("dashboards"), "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "dashboards"}}, "ingress": [{"ports": [{"port": 3000}]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta("dashboards"), "spec": {"rules": [{"host": "dashboards.observa.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "dashboards", "port": {"number": 80}}}}]}}], "tls": [{"hosts": ["dashboards.observa.example"], "secretName": "dashboards-tls"}]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta("metrics-adapter"), "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "metrics-adapter"}, "minReplicas": 2, "maxReplicas": 4, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("observa-retention-sweep"), "spec": {"schedule": "17 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "serviceAccountName": "operator", "containers": [{"name": "sweep", "image": "registry.observa.example/operator:0.31.2", "args": ["sweep"]}]}}}}}},
        # The resource-metrics API, served (on a real cluster) by the adapter.
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": meta(f"v1beta1.metrics.{NS}.example", ns=None),
         "spec": {"group": f"metrics.{NS}.example", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100, "insecureSkipTLSVerify": True, "service": {"name": "metrics-adapter", "namespace": NS, "port": 443}}},
    ]
    # Webhooks: failurePolicy Ignore and a selector nothing carries, so a real cluster without the
    # webhook running is not affected.
    selector = {"matchLabels": {"observa.example/webhook": "enabled"}}
    client = {"service": {"name": "cert-webhook", "namespace": NS, "path": "/validate", "port": 443}}
    rules = [{"apiGroups": [CERTS], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["certificates", "issuers", "clusterissuers"]}]
    out += [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": meta("observa-cert-webhook", ns=None, annotations={"certs.observa.example/inject-ca-from-secret": f"{NS}/cert-webhook-ca"}),
         "webhooks": [{"name": "webhook.certs.observa.example", "admissionReviewVersions": ["v1"], "clientConfig": client, "rules": rules, "failurePolicy": "Ignore", "sideEffects": "None", "timeoutSeconds": 5, "objectSelector": selector}]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": meta("observa-cert-webhook", ns=None),
         "webhooks": [{"name": "webhook.certs.observa.example", "admissionReviewVersions": ["v1"], "clientConfig": {**client, "service": {**client["service"], "path": "/mutate"}}, "rules": rules, "failurePolicy": "Ignore", "sideEffects": "None", "timeoutSeconds": 5, "objectSelector": selector, "reinvocationPolicy": "Never"}]},
    ]
    # Custom resources.
    out += [
        {"apiVersion": f"{MON}/v1", "kind": "Collector", "metadata": meta("main"), "spec": {"replicas": 2, "version": "3.0.1", "retention": "15d", "scrapeInterval": "30s", "serviceAccountName": "collector", "probeSelector": {}, "ruleSelector": {"matchLabels": {"observa.example/rules": "main"}}, "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}}, "storage": {"size": "50Gi", "accessModes": ["ReadWriteOnce"]}, "externalLabels": {"cluster": "demo"}, "remoteWrite": [{"name": "central", "url": "https://metrics.central.observa.example/api/v1/write", "basicAuth": {"username": {"name": "remote-write-credentials", "key": "username"}, "password": {"name": "remote-write-credentials", "key": "password"}}}]}},
        {"apiVersion": f"{MON}/v1", "kind": "Alerter", "metadata": meta("main"), "spec": {"replicas": 2, "version": "0.27.0", "serviceAccountName": "alerter", "routeSelector": {}}},
    ]
    for i, target in enumerate(["api", "dashboards", "ingress", "dns", "registry", "git", "mail", "vpn", "sso", "status"]):
        out.append({"apiVersion": f"{MON}/v1", "kind": "Probe", "metadata": meta(f"blackbox-{target}"), "spec": {"interval": f"{30 + i}s", "module": "http_2xx", "prober": {"url": "blackbox.observa.svc:9115"}, "targets": {"staticConfig": {"static": [f"https://{target}.observa.example/healthz"], "labels": {"target": target}}}}})
    for component in ["api-server", "kubelet", "scheduler", "controller-manager", "etcd", "nodes", "workloads", "storage", "network", "certificates", "collector", "alerter"]:
        out.append({"apiVersion": f"{MON}/v1", "kind": "AlertRule", "metadata": meta(f"{component}-rules", labels={"observa.example/rules": "main"}), "spec": {"groups": [{"name": component, "interval": "1m", "rules": [
            {"alert": f"{component.title().replace('-', '')}Down", "expr": f'absent(up{{job="{component}"}} == 1)', "for": "15m", "labels": {"severity": "critical"}, "annotations": {"summary": f"{component} has disappeared from discovery."}},
            {"alert": f"{component.title().replace('-', '')}ErrorsHigh", "expr": f'sum(rate({component.replace("-", "_")}_errors_total[5m])) > 1', "for": "10m", "labels": {"severity": "warning"}, "annotations": {"summary": f"{component} reports errors."}},
            {"record": f"{component.replace('-', '_')}:requests:rate5m", "expr": f"sum(rate({component.replace('-', '_')}_requests_total[5m]))"},
        ]}]}})
    out += [
        {"apiVersion": f"{CERTS}/v1", "kind": "ClusterIssuer", "metadata": meta("observa-selfsigned", ns=None), "spec": {"selfSigned": {}}},
        {"apiVersion": f"{CERTS}/v1", "kind": "Issuer", "metadata": meta("observa-ca"), "spec": {"ca": {"secretName": "observa-ca"}}},
        {"apiVersion": f"{CERTS}/v1", "kind": "Certificate", "metadata": meta("observa-ca"), "spec": {"isCA": True, "commonName": "observa-ca", "secretName": "observa-ca", "duration": "87600h", "privateKey": {"algorithm": "ECDSA", "size": 256}, "issuerRef": {"name": "observa-selfsigned", "kind": "ClusterIssuer", "group": CERTS}}},
    ]
    for name, dns in [("cert-webhook", "cert-webhook.observa.svc"), ("metrics-adapter", "metrics-adapter.observa.svc"), ("dashboards-tls", "dashboards.observa.example"), ("collector", "collector.observa.svc"), ("alerter", "alerter.observa.svc")]:
        out.append({"apiVersion": f"{CERTS}/v1", "kind": "Certificate", "metadata": meta(name), "spec": {"secretName": name if name.endswith("-tls") else f"{name}-tls", "dnsNames": [dns], "duration": "2160h", "renewBefore": "360h", "usages": ["server auth"], "privateKey": {"algorithm": "RSA", "size": 2048, "rotationPolicy": "Always"}, "issuerRef": {"name": "observa-ca", "kind": "Issuer", "group": CERTS}}})
    return out


def write(name, docs, header):
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
        f.write(f"# {header}\n# Generated by generate.py in this directory; edit that and rerun it.\n")
        for d in docs:
            f.write("---\n" + doc(d) + "\n")


if __name__ == "__main__":
    write("crds.yaml", crds(), "The observa stack's CustomResourceDefinitions (apply first).")
    write("install.yaml", install(), "The observa stack: everything but its CRDs.")
