//! OpenAPI documents: the v3 index and per-group-version documents (paths only, with the PATCH
//! parameters kubectl checks to hand validation to the server), and a minimal v2 document.
//!
//! Schemas are open objects: the simulator validates no fields, so kubectl's client-side checks
//! must not either. Because no PATCH operation offers `application/strategic-merge-patch+json`,
//! kubectl's client-side apply computes strategic merge patches from its compiled-in types.

use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::resource::{Registry, ResourceType};

/// The `/openapi/v3/` path of a group-version: `api/v1` or `apis/{group}/{version}`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn schema_name(t: &ResourceType) -> String {
    let group = if t.group.is_empty() { "core" } else { &t.group };
    format!("kubesim.{group}.{}.{}", t.version, t.kind)
}

fn operation_id(action: &str, t: &ResourceType, suffix: &str) -> String {
    let group: String = t
        .group
        .split('.')
        .next()
        .filter(|g| !g.is_empty())
        .map(|g| g[..1].to_ascii_uppercase() + &g[1..])
        .unwrap_or_else(|| "Core".into());
    let version = t.version[..1].to_ascii_uppercase() + &t.version[1..];
    let scope = if t.namespaced { "Namespaced" } else { "" };
    format!("{action}{group}{version}{scope}{}{suffix}", t.kind)
}

fn query_param(name: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn response(schema: &str) -> Value {
    json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}})
}

fn operation(
    t: &ResourceType,
    action: &str,
    k8s_action: &str,
    suffix: &str,
    schema: &str,
    params: Vec<Value>,
    body: Option<Value>,
) -> Value {
    let mut op = json!({
        "operationId": operation_id(action, t, suffix),
        "parameters": params,
        "responses": response(schema),
        "x-kubernetes-action": k8s_action,
        "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
    });
    if let Some(body) = body {
        op["requestBody"] = json!({"content": body, "required": true});
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        query_param("dryRun", "string"),
        query_param("fieldManager", "string"),
        query_param("fieldValidation", "string"),
    ]
}

/// The OpenAPI v3 document of one group-version.
pub fn v3_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"type": "object"}),
    );
    let root = format!("/{}", gv_path(group, version));
    for t in &types {
        let schema = schema_name(t);
        let list_schema = format!("{schema}List");
        let gvk = json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
        schemas.insert(
            schema.clone(),
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "x-kubernetes-group-version-kind": gvk}),
        );
        schemas.insert(
            list_schema.clone(),
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        let object_body = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}});
        let patch_body = json!({
            "application/apply-patch+yaml": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
            "application/json-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
            "application/merge-patch+json": {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
        });
        let (collection, mut scope_params) = if t.namespaced {
            (
                format!("{root}/namespaces/{{namespace}}/{}", t.plural),
                vec![path_param("namespace")],
            )
        } else {
            (format!("{root}/{}", t.plural), vec![])
        };
        let list_params = vec![
            query_param("labelSelector", "string"),
            query_param("fieldSelector", "string"),
            query_param("watch", "boolean"),
        ];
        let mut coll = json!({
            "get": operation(t, "list", "list", "", &list_schema, list_params, None),
            "parameters": scope_params.clone(),
        });
        if t.allows("create") {
            coll["post"] = operation(
                t,
                "create",
                "post",
                "",
                &schema,
                write_params(),
                Some(object_body.clone()),
            );
        }
        paths.insert(collection.clone(), coll);
        scope_params.push(path_param("name"));
        let mut patch_params = write_params();
        patch_params.push(query_param("force", "boolean"));
        let item = json!({
            "get": operation(t, "read", "get", "", &schema, vec![], None),
            "put": operation(t, "replace", "put", "", &schema, write_params(), Some(object_body.clone())),
            "patch": operation(t, "patch", "patch", "", &schema, patch_params.clone(), Some(patch_body.clone())),
            "delete": operation(t, "delete", "delete", "", &schema, vec![query_param("dryRun", "string")], None),
            "parameters": scope_params.clone(),
        });
        if t.allows("get") {
            paths.insert(format!("{collection}/{{name}}"), item);
        }
        if t.has_status {
            paths.insert(
                format!("{collection}/{{name}}/status"),
                json!({
                    "get": operation(t, "read", "get", "Status", &schema, vec![], None),
                    "put": operation(t, "replace", "put", "Status", &schema, write_params(), Some(object_body)),
                    "patch": operation(t, "patch", "patch", "Status", &schema, patch_params, Some(patch_body)),
                    "parameters": scope_params,
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// A stable hash of a document, for the `?hash=` of its URL.
fn hash(doc: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `GET /openapi/v3`: every group-version with its `serverRelativeURL`.
pub fn v3_index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            if let Some(doc) = v3_document(registry, &group, &version) {
                let path = gv_path(&group, &version);
                let url = format!("/openapi/v3/{path}?hash={}", hash(&doc));
                paths.insert(path, json!({"serverRelativeURL": url}));
            }
        }
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/{api/v1|apis/g/v}`.
pub fn v3_for_path(registry: &Registry, path: &str) -> Option<Value> {
    let rest = path.trim_matches('/');
    let (group, version) = if let Some(v) = rest.strip_prefix("api/") {
        ("", v)
    } else {
        rest.strip_prefix("apis/")?.rsplit_once('/')?
    };
    v3_document(registry, group, version)
}

/// `GET /openapi/v2` as JSON: a valid, empty Swagger document.
pub fn v2_json() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": format!("v1.{}.0", crate::discovery::KUBE_MINOR)}, "paths": {}, "definitions": {}})
}

/// `GET /openapi/v2` as protobuf (`openapi_v2.Document`): swagger version and info only.
pub fn v2_protobuf() -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }
    let version = format!("v1.{}.0", crate::discovery::KUBE_MINOR);
    let info = [field(0x0a, b"Kubernetes"), field(0x12, version.as_bytes())].concat();
    [field(0x0a, b"2.0"), field(0x12, &info)].concat()
}
