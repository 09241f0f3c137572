//! Request dispatch: authentication, discovery and OpenAPI, knobs, and the verbs on resources.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header, request::Parts};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::http::{
    ApiPath, Body, Query, ResourcePath, bytes_response, error_response, json_response,
    parse_api_path,
};
use crate::managed::default_manager;
use crate::patch::{self, PatchType};
use crate::resource::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::store::{Filter, WriteCtx, now};
use crate::{discovery, knobs, openapi, protobuf, scale, table, watch};

/// Serves one request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let response = match body.collect().await {
        Ok(body) => route(&shared, &parts, body.to_bytes()).unwrap_or_else(|e| error_response(&e)),
        Err(e) => error_response(&ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    };
    tracing::debug!(method = %parts.method, uri = %parts.uri, status = response.status().as_u16(), "request");
    response
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let auth = header_str(headers, header::AUTHORIZATION);
    match auth.strip_prefix("Bearer ") {
        Some(token) if token.trim() == shared.token => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

fn ok(value: &Value) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, value))
}

fn route(shared: &Arc<Shared>, parts: &Parts, body: Bytes) -> Result<Response<Body>, ApiError> {
    let path = parts.uri.path();
    let get = parts.method == Method::GET;
    match path {
        "/version" if get => return ok(&discovery::version()),
        "/healthz" | "/livez" | "/readyz" if get => {
            return Ok(bytes_response(
                StatusCode::OK,
                "text/plain",
                Bytes::from_static(b"ok"),
            ));
        }
        _ => {}
    }
    authorize(shared, &parts.headers)?;
    let query = Query::parse(parts.uri.query());
    let accept = header_str(&parts.headers, header::ACCEPT);
    match path {
        "/api" if get => return ok(&discovery::api_versions(&shared.addr.to_string())),
        "/apis" if get => return ok(&discovery::group_list(&shared.lock().registry)),
        "/openapi/v2" if get => {
            // Clients ask for `...spec.v2@v1.0+protobuf`, but `@` is not a token character, so
            // the API server answers with the `.v1.0` spelling, which Go's mime parser accepts.
            return Ok(if accept.contains("protobuf") {
                let content_type = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
                bytes_response(
                    StatusCode::OK,
                    content_type,
                    Bytes::from(openapi::v2_protobuf()),
                )
            } else {
                json_response(StatusCode::OK, &openapi::v2_json())
            });
        }
        "/openapi/v3" if get => return ok(&openapi::v3_index(&shared.lock().registry)),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/openapi/v3/") {
        let doc =
            openapi::v3_for_path(&shared.lock().registry, rest).ok_or_else(ApiError::no_route)?;
        return ok(&doc);
    }
    if let Some(rest) = path.strip_prefix("/kubesim/") {
        return knobs::handle(shared, &parts.method, rest, &body);
    }
    let parsed = {
        let store = shared.lock();
        parse_api_path(path, |g, v, p| store.registry.is_namespaced_plural(g, v, p))
    };
    match parsed.ok_or_else(ApiError::no_route)? {
        ApiPath::Group(group) if get => ok(
            &discovery::group(&shared.lock().registry, &group).ok_or_else(ApiError::no_route)?
        ),
        ApiPath::GroupVersion(group, version) if get => {
            ok(
                &discovery::resource_list(&shared.lock().registry, &group, &version)
                    .ok_or_else(ApiError::no_route)?,
            )
        }
        ApiPath::Resource(rp) => resource(shared, parts, rp, &query, accept, &body),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_body_as(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if content_type.starts_with(protobuf::CONTENT_TYPE) {
        return protobuf::decode_body(body);
    }
    parse_body(body)
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))
}

fn filter(rp: &ResourcePath, query: &Query) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: rp.namespace.clone(),
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())?,
    })
}

fn list_body(rt: &ResourceType, items: Vec<Value>, rv: u64) -> Value {
    json!({"kind": rt.list_kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

/// Checks DeleteOptions preconditions against the stored object.
fn check_preconditions(
    existing: &Value,
    options: &Value,
    rt: &ResourceType,
    name: &str,
) -> Result<(), ApiError> {
    for (field, pointer) in [
        ("uid", "/metadata/uid"),
        ("resourceVersion", "/metadata/resourceVersion"),
    ] {
        if let Some(want) = options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
            && existing.pointer(pointer).and_then(Value::as_str) != Some(want)
        {
            return Err(ApiError::stale(&rt.group, &rt.plural, name));
        }
    }
    Ok(())
}

fn resource(
    shared: &Arc<Shared>,
    parts: &Parts,
    rp: ResourcePath,
    query: &Query,
    accept: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let rt = shared
        .lock()
        .registry
        .by_plural(&rp.group, &rp.version, &rp.plural)
        .ok_or_else(ApiError::no_route)?;
    if (!rt.namespaced && rp.namespace.is_some())
        || (rt.namespaced && rp.name.is_some() && rp.namespace.is_none())
    {
        return Err(ApiError::no_route());
    }
    let status = match rp.subresource.as_deref() {
        None => false,
        Some("status") if rt.has_status => true,
        Some("scale") if rt.scale.is_some() => {
            return scale_request(shared, parts, &rt, &rp, query, body);
        }
        Some("finalize") if rt.kind == "Namespace" && rt.group.is_empty() => false,
        Some(_) => return Err(ApiError::no_route()),
    };
    let ns = rp.namespace.clone().unwrap_or_default();
    let watching = rp.watch_prefix || query.flag("watch");
    let verb = match (&parts.method, rp.name.is_some()) {
        (&Method::GET, true) if !watching => "get",
        (&Method::GET, _) if watching => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    if !(rt.allows(verb) || (status && matches!(verb, "get" | "update" | "patch"))) {
        return Err(ApiError::method_not_allowed());
    }
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let mut ctx = WriteCtx {
        manager: query
            .get("fieldManager")
            .map(str::to_string)
            .unwrap_or_else(|| default_manager(user_agent)),
        dry_run: query.get("dryRun") == Some("All"),
        now: now(),
    };
    let mut store = shared.lock();
    store.count(if verb == "deletecollection" {
        "delete"
    } else {
        verb
    });
    let name = rp.name.clone().unwrap_or_default();
    match verb {
        "get" => {
            let obj = store.get(&rt, &ns, &name)?;
            if table::wanted(accept) {
                return ok(&table::table(
                    &rt,
                    &[obj],
                    store.resource_version(),
                    query.get("includeObject").unwrap_or_default(),
                ));
            }
            ok(&obj)
        }
        "list" => {
            let (items, rv) = store.list(&rt, &filter(&rp, query)?);
            if table::wanted(accept) {
                return ok(&table::table(
                    &rt,
                    &items,
                    rv,
                    query.get("includeObject").unwrap_or_default(),
                ));
            }
            ok(&list_body(&rt, items, rv))
        }
        "watch" => {
            drop(store);
            let mut f = filter(&rp, query)?;
            if let Some(name) = &rp.name {
                f.fields = FieldSelector::parse(&format!("metadata.name={name}"))?;
            }
            watch::watch(shared, rt, f, query)
        }
        "create" => {
            let obj = parse_body_as(header_str(&parts.headers, header::CONTENT_TYPE), body)?;
            if rt.verbs == ["create"] {
                return Ok(json_response(StatusCode::CREATED, &review(&rt, obj)));
            }
            let created = store.create(&rt, rp.namespace.as_deref(), obj, &ctx)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        "update" => ok(&store.update(
            &rt,
            &ns,
            &name,
            parse_body_as(header_str(&parts.headers, header::CONTENT_TYPE), body)?,
            &ctx,
            status,
        )?),
        "patch" => {
            let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
            let patch_type = PatchType::from_content_type(content_type)?;
            if patch_type == PatchType::Apply {
                if query.get("fieldManager").is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request(
                        "PATCH requests with apply content type require a fieldManager",
                    ));
                }
                let force = query.flag("force");
                return ok(&store.apply(
                    &rt,
                    rp.namespace.as_deref(),
                    &name,
                    body,
                    &ctx,
                    force,
                    status,
                )?);
            }
            let existing = store.get(&rt, &ns, &name)?;
            let patched = patch::apply_patch(&existing, patch_type, body)?;
            ok(&store.update(&rt, &ns, &name, patched, &ctx, status)?)
        }
        "delete" => {
            let options = if body.is_empty() {
                json!({})
            } else {
                parse_body(body)?
            };
            if options["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == "All"))
            {
                ctx.dry_run = true;
            }
            check_preconditions(&store.get(&rt, &ns, &name)?, &options, &rt, &name)?;
            ok(&store.delete(&rt, &ns, &name, &ctx)?)
        }
        _ => {
            let (items, rv) = store.list(&rt, &filter(&rp, query)?);
            let mut deleted = Vec::new();
            for item in items {
                let item_ns = item
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let item_name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                deleted.push(store.delete(&rt, &item_ns, &item_name, &ctx)?);
            }
            ok(&list_body(&rt, deleted, rv))
        }
    }
}

/// `.../{name}/scale`: GET, PUT and PATCH.
fn scale_request(
    shared: &Arc<Shared>,
    parts: &Parts,
    rt: &Arc<ResourceType>,
    rp: &ResourcePath,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let (verb, change) = match parts.method {
        Method::GET => ("get", None),
        Method::PUT => ("update", Some((None, body))),
        Method::PATCH => {
            let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
            (
                "patch",
                Some((Some(PatchType::from_content_type(content_type)?), body)),
            )
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let ctx = WriteCtx {
        manager: query
            .get("fieldManager")
            .map(str::to_string)
            .unwrap_or_else(|| default_manager(user_agent)),
        dry_run: query.get("dryRun") == Some("All"),
        now: now(),
    };
    let mut store = shared.lock();
    store.count(verb);
    let ns = rp.namespace.clone().unwrap_or_default();
    let name = rp.name.clone().unwrap_or_default();
    ok(&scale::handle(&mut store, rt, &ns, &name, change, &ctx)?)
}

/// Answers a create-only review kind (access reviews, token reviews) with an approving status.
fn review(rt: &ResourceType, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    let user =
        json!({"username": "kubesim-admin", "groups": ["system:masters", "system:authenticated"]});
    obj["status"] = match rt.kind.as_str() {
        "TokenReview" => json!({"authenticated": true, "user": user}),
        "SelfSubjectReview" => json!({"userInfo": user}),
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": false,
        }),
        _ => json!({"allowed": true, "reason": "kubesim allows everything"}),
    };
    obj
}
