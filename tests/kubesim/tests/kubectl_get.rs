//! `kubectl get` prints the columns it prints against a real cluster, from the server-side
//! Tables the simulator serves (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`).

mod common;

use std::collections::BTreeMap;

use common::Cluster;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: tables}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: tables}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "registry.example.com/web:1.0"}
      - {name: sidecar, image: "registry.example.com/proxy:2.1"}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: tables}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: "registry.example.com/db:16"}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: tables}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {kubernetes.io/os: linux}
      containers: [{name: agent, image: "registry.example.com/agent:3"}]
---
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: tables}
spec:
  containers:
  - {name: a, image: busybox}
  - {name: b, image: busybox}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: tables}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: metrics, port: 9090, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: edge, namespace: tables}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 443, nodePort: 30443}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: tables}
data: {a: "1", b: "2"}
binaryData: {c: AAEC}
---
apiVersion: v1
kind: Secret
metadata: {name: tls, namespace: tables}
type: kubernetes.io/tls
data: {tls.crt: QUJD, tls.key: REVG}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: runner, namespace: tables}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: tables}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:tables-reader"}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: read, namespace: tables}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:tables-reader"}
subjects: [{kind: ServiceAccount, name: runner, namespace: tables}]
"#;

/// Runs `kubectl get` and splits its output into rows of cells (columns are separated by at
/// least two spaces; a cell such as `80, 443` holds one).
fn rows(c: &Cluster, args: &[&str]) -> Vec<Vec<String>> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    c.ok(&full)
        .lines()
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Checks the header and each row's cells; the AGE and CREATED AT columns are only checked for shape.
fn expect(c: &Cluster, args: &[&str], header: &[&str], body: &[&[&str]]) {
    let got = rows(c, args);
    assert_eq!(got[0], header, "kubectl get {args:?}: header");
    assert_eq!(got.len() - 1, body.len(), "kubectl get {args:?}: {got:?}");
    for (row, want) in got[1..].iter().zip(body) {
        assert_eq!(row.len(), header.len(), "kubectl get {args:?}: {row:?}");
        for ((cell, want), column) in row.iter().zip(*want).zip(header) {
            match *column {
                "AGE" => assert!(
                    cell.ends_with('s') && cell[..cell.len() - 1].parse::<u32>().is_ok(),
                    "AGE cell {cell:?}"
                ),
                "CREATED AT" => assert!(
                    humantime::parse_rfc3339(cell).is_ok(),
                    "CREATED AT cell {cell:?}"
                ),
                _ => assert_eq!(cell, want, "kubectl get {args:?}: column {column}"),
            }
        }
    }
}

#[test]
fn kubectl_get_prints_the_columns_of_a_real_cluster() {
    let c = Cluster::start();
    c.apply(&["--server-side"], OBJECTS);
    fn get(kind: &str) -> Vec<&str> {
        vec![kind, "-n", "tables"]
    }

    expect(
        &c,
        &get("deployments"),
        &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        &[&["web", "3/3", "3", "3", ""]],
    );
    let mut wide = get("deployments");
    wide.extend(["-o", "wide"]);
    expect(
        &c,
        &wide,
        &[
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR",
        ],
        &[&[
            "web",
            "3/3",
            "3",
            "3",
            "",
            "web,sidecar",
            "registry.example.com/web:1.0,registry.example.com/proxy:2.1",
            "app=web",
        ]],
    );
    c.sim
        .set_workload_mode(flotilla_kubesim::WorkloadMode::Progressing);
    c.apply(
        &["--server-side"],
        &OBJECTS.replace("replicas: 3", "replicas: 4"),
    );
    expect(
        &c,
        &get("deploy"),
        &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        &[&["web", "0/4", "4", "0", ""]],
    );
    c.sim
        .set_workload_mode(flotilla_kubesim::WorkloadMode::Ready);
    expect(
        &c,
        &get("statefulsets"),
        &["NAME", "READY", "AGE"],
        &[&["db", "2/2", ""]],
    );
    expect(
        &c,
        &get("daemonsets"),
        &[
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE",
        ],
        &[&[
            "agent",
            "1",
            "1",
            "1",
            "1",
            "1",
            "kubernetes.io/os=linux",
            "",
        ]],
    );
    expect(
        &c,
        &get("pods"),
        &["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        &[&["debug", "0/2", "Pending", "0", ""]],
    );

    let services = rows(&c, &get("services"));
    assert_eq!(
        services[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let by_name: BTreeMap<&str, &Vec<String>> =
        services[1..].iter().map(|r| (r[0].as_str(), r)).collect();
    for (name, ty, ports) in [
        ("web", "ClusterIP", "80/TCP,9090/UDP"),
        ("edge", "NodePort", "443:30443/TCP"),
    ] {
        let row = by_name[name];
        assert_eq!(
            (row[1].as_str(), row[3].as_str(), row[4].as_str()),
            (ty, "<none>", ports)
        );
        assert!(
            row[2].parse::<std::net::Ipv4Addr>().is_ok(),
            "CLUSTER-IP of {name}: {row:?}"
        );
    }

    expect(
        &c,
        &get("configmaps"),
        &["NAME", "DATA", "AGE"],
        &[&["settings", "3", ""]],
    );
    expect(
        &c,
        &get("secrets"),
        &["NAME", "TYPE", "DATA", "AGE"],
        &[&["tls", "kubernetes.io/tls", "2", ""]],
    );
    expect(
        &c,
        &get("serviceaccounts"),
        &["NAME", "SECRETS", "AGE"],
        &[&["runner", "0", ""]],
    );
    expect(
        &c,
        &get("pdb"),
        &[
            "NAME",
            "MIN AVAILABLE",
            "MAX UNAVAILABLE",
            "ALLOWED DISRUPTIONS",
            "AGE",
        ],
        &[&["web", "N/A", "1", "0", ""]],
    );
    expect(
        &c,
        &get("rolebindings"),
        &["NAME", "ROLE", "AGE"],
        &[&["read", "ClusterRole/system:tables-reader", ""]],
    );
    expect(
        &c,
        &["clusterrole", "system:tables-reader"],
        &["NAME", "CREATED AT"],
        &[&["system:tables-reader", ""]],
    );
    expect(
        &c,
        &["namespace", "tables"],
        &["NAME", "STATUS", "AGE"],
        &[&["tables", "Active", ""]],
    );

    c.apply(&[], include_str!("testdata/widget-crd.yaml"));
    let crds = rows(&c, &["crd"]);
    assert_eq!(crds[0], ["NAME", "CREATED AT"]);
    assert_eq!(crds.len(), 2, "{crds:?}");
    assert!(humantime::parse_rfc3339(&crds[1][1]).is_ok(), "{crds:?}");
}
