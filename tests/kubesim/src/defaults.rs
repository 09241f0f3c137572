//! The few defaults the real API server fills in that clients depend on (kubectl rollout status
//! reads update strategies; controllers read replicas; Services get a type and cluster IP).
//! Defaults are set only where a field is missing, on every write, and no manager owns them.

use serde_json::{Value, json};

use crate::resource::ResourceType;

fn set_missing(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, field) = pointer.rsplit_once('/').expect("pointer has a parent");
    let mut cur = obj;
    for seg in parent.split('/').filter(|s| !s.is_empty()) {
        if !cur.get(seg).is_some_and(Value::is_object) {
            cur[seg] = json!({});
        }
        cur = &mut cur[seg];
    }
    if cur.get(field).is_none() {
        cur[field] = value;
    }
}

fn default_ports(ports: Option<&mut Value>, target_port: bool) {
    for port in ports.and_then(Value::as_array_mut).into_iter().flatten() {
        if port.get("protocol").is_none() {
            port["protocol"] = json!("TCP");
        }
        if target_port && port.get("targetPort").is_none() {
            port["targetPort"] = port["port"].clone();
        }
    }
}

/// Fills in missing defaults for the object's kind.
pub fn apply(rt: &ResourceType, obj: &mut Value) {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => {
            set_missing(obj, "/spec/replicas", json!(1));
            set_missing(obj, "/spec/strategy/type", json!("RollingUpdate"));
            if obj.pointer("/spec/strategy/type") == Some(&json!("RollingUpdate")) {
                set_missing(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
                set_missing(
                    obj,
                    "/spec/strategy/rollingUpdate/maxUnavailable",
                    json!("25%"),
                );
            }
            set_missing(obj, "/spec/revisionHistoryLimit", json!(10));
            set_missing(obj, "/spec/progressDeadlineSeconds", json!(600));
        }
        ("apps", "StatefulSet") => {
            set_missing(obj, "/spec/replicas", json!(1));
            set_missing(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
            set_missing(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if obj.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
                set_missing(
                    obj,
                    "/spec/updateStrategy/rollingUpdate/partition",
                    json!(0),
                );
            }
            set_missing(obj, "/spec/revisionHistoryLimit", json!(10));
        }
        ("apps", "DaemonSet") => {
            set_missing(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if obj.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
                set_missing(
                    obj,
                    "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                    json!(1),
                );
                set_missing(obj, "/spec/updateStrategy/rollingUpdate/maxSurge", json!(0));
            }
            set_missing(obj, "/spec/revisionHistoryLimit", json!(10));
        }
        ("", "Service") => {
            set_missing(obj, "/spec/type", json!("ClusterIP"));
            set_missing(obj, "/spec/sessionAffinity", json!("None"));
            if obj.pointer("/spec/type") != Some(&json!("ExternalName")) {
                let [a, b]: [u8; 2] = rand::random();
                set_missing(
                    obj,
                    "/spec/clusterIP",
                    json!(format!("10.96.{a}.{}", b.max(1))),
                );
                let ip = obj["spec"]["clusterIP"].clone();
                set_missing(obj, "/spec/clusterIPs", json!([ip]));
            }
            default_ports(obj.pointer_mut("/spec/ports"), true);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::builtin::builtin_resources;

    #[test]
    fn defaults_fill_only_missing_fields() {
        let all = builtin_resources();
        let deploy = all.iter().find(|t| t.kind == "Deployment").unwrap();
        let mut obj = json!({"spec": {"replicas": 3, "strategy": {"type": "Recreate"}}});
        super::apply(deploy, &mut obj);
        assert_eq!(obj["spec"]["replicas"], 3);
        assert_eq!(obj["spec"]["strategy"], json!({"type": "Recreate"}));
        let svc = all
            .iter()
            .find(|t| t.kind == "Service" && t.group.is_empty())
            .unwrap();
        let mut obj = json!({"spec": {"ports": [{"port": 80}]}});
        super::apply(svc, &mut obj);
        assert_eq!(
            obj["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "targetPort": 80}])
        );
        assert!(
            obj["spec"]["clusterIP"]
                .as_str()
                .unwrap()
                .starts_with("10.96.")
        );
    }
}
