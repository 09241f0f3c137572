//! Decoding of Kubernetes protobuf request bodies for the few kinds kubectl's imperative commands
//! send that way (`kubectl create namespace|configmap|secret|serviceaccount|role|rolebinding|
//! clusterrole|clusterrolebinding`, `kubectl auth can-i`). Responses are always JSON, which every
//! client accepts. Other kinds are answered `415` with a hint to use `kubectl apply -f`.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// `application/vnd.kubernetes.protobuf`.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// How one field decodes.
#[derive(Clone, Copy)]
enum Field {
    Str,
    Bool,
    Msg(&'static [(u32, &'static str, Field)]),
    RepStr,
    RepMsg(&'static [(u32, &'static str, Field)]),
    MapStr,
    MapBytes,
}

type Schema = &'static [(u32, &'static str, Field)];

const OBJECT_META: Schema = &[
    (1, "name", Field::Str),
    (2, "generateName", Field::Str),
    (3, "namespace", Field::Str),
    (11, "labels", Field::MapStr),
    (12, "annotations", Field::MapStr),
    (14, "finalizers", Field::RepStr),
];
const META: (u32, &str, Field) = (1, "metadata", Field::Msg(OBJECT_META));
const POLICY_RULE: Schema = &[
    (1, "verbs", Field::RepStr),
    (2, "apiGroups", Field::RepStr),
    (3, "resources", Field::RepStr),
    (4, "resourceNames", Field::RepStr),
    (5, "nonResourceURLs", Field::RepStr),
];
const BINDING: Schema = &[
    META,
    (
        2,
        "subjects",
        Field::RepMsg(&[
            (1, "kind", Field::Str),
            (2, "apiGroup", Field::Str),
            (3, "name", Field::Str),
            (4, "namespace", Field::Str),
        ]),
    ),
    (
        3,
        "roleRef",
        Field::Msg(&[
            (1, "apiGroup", Field::Str),
            (2, "kind", Field::Str),
            (3, "name", Field::Str),
        ]),
    ),
];
const RESOURCE_ATTRIBUTES: Schema = &[
    (1, "namespace", Field::Str),
    (2, "verb", Field::Str),
    (3, "group", Field::Str),
    (4, "version", Field::Str),
    (5, "resource", Field::Str),
    (6, "subresource", Field::Str),
    (7, "name", Field::Str),
];

fn schema(kind: &str) -> Option<Schema> {
    Some(match kind {
        "Namespace" => &[
            META,
            (2, "spec", Field::Msg(&[(1, "finalizers", Field::RepStr)])),
        ],
        "ConfigMap" => &[
            META,
            (2, "data", Field::MapStr),
            (3, "binaryData", Field::MapBytes),
            (4, "immutable", Field::Bool),
        ],
        "Secret" => &[
            META,
            (2, "data", Field::MapBytes),
            (3, "type", Field::Str),
            (4, "stringData", Field::MapStr),
            (5, "immutable", Field::Bool),
        ],
        "ServiceAccount" => &[
            META,
            (
                3,
                "imagePullSecrets",
                Field::RepMsg(&[(1, "name", Field::Str)]),
            ),
            (4, "automountServiceAccountToken", Field::Bool),
        ],
        "Role" | "ClusterRole" => &[META, (2, "rules", Field::RepMsg(POLICY_RULE))],
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        "SelfSubjectAccessReview" => &[
            META,
            (
                2,
                "spec",
                Field::Msg(&[
                    (1, "resourceAttributes", Field::Msg(RESOURCE_ATTRIBUTES)),
                    (
                        2,
                        "nonResourceAttributes",
                        Field::Msg(&[(1, "path", Field::Str), (2, "verb", Field::Str)]),
                    ),
                ]),
            ),
        ],
        "SelfSubjectRulesReview" => &[
            META,
            (2, "spec", Field::Msg(&[(1, "namespace", Field::Str)])),
        ],
        _ => return None,
    })
}

fn malformed() -> ApiError {
    ApiError::bad_request("malformed protobuf body")
}

/// Reads protobuf fields: (number, wire type, varint value or bytes).
struct Reader<'a> {
    buf: &'a [u8],
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(malformed)?;
            self.buf = rest;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(malformed())
    }

    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = (tag >> 3) as u32;
        let wire = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = self.varint()? as usize;
                if len > self.buf.len() {
                    return Err(malformed());
                }
                let (bytes, rest) = self.buf.split_at(len);
                self.buf = rest;
                Wire::Bytes(bytes)
            }
            1 | 5 => {
                let n = if tag & 7 == 1 { 8 } else { 4 };
                self.buf = self.buf.get(n..).ok_or_else(malformed)?;
                Wire::Fixed
            }
            _ => return Err(malformed()),
        };
        Ok(Some((number, wire)))
    }
}

fn string(bytes: &[u8]) -> Result<Value, ApiError> {
    Ok(Value::String(
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed())?,
    ))
}

fn map_entry(bytes: &[u8], base64_value: bool) -> Result<(String, Value), ApiError> {
    let (mut key, mut value) = (String::new(), Value::String(String::new()));
    let mut r = Reader { buf: bytes };
    while let Some((n, wire)) = r.next()? {
        if let Wire::Bytes(b) = wire {
            match n {
                1 => key = String::from_utf8(b.to_vec()).map_err(|_| malformed())?,
                2 if base64_value => {
                    value = json!(base64::engine::general_purpose::STANDARD.encode(b))
                }
                2 => value = string(b)?,
                _ => {}
            }
        }
    }
    Ok((key, value))
}

fn decode(bytes: &[u8], schema: Schema) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut r = Reader { buf: bytes };
    while let Some((n, wire)) = r.next()? {
        let Some((_, name, field)) = schema.iter().find(|(num, _, _)| *num == n) else {
            continue;
        };
        let name = name.to_string();
        match (field, wire) {
            (Field::Bool, Wire::Varint(v)) => {
                out.insert(name, json!(v != 0));
            }
            // Empty strings are what omitted optional strings encode as.
            (Field::Str, Wire::Bytes([])) => {}
            (Field::Str, Wire::Bytes(b)) => {
                out.insert(name, string(b)?);
            }
            (Field::Msg(s), Wire::Bytes(b)) => {
                out.insert(name, Value::Object(decode(b, s)?));
            }
            (Field::RepStr, Wire::Bytes(b)) => push(&mut out, name, string(b)?),
            (Field::RepMsg(s), Wire::Bytes(b)) => {
                push(&mut out, name, Value::Object(decode(b, s)?))
            }
            (Field::MapStr | Field::MapBytes, Wire::Bytes(b)) => {
                let (k, v) = map_entry(b, matches!(field, Field::MapBytes))?;
                if let Value::Object(m) = out.entry(name).or_insert_with(|| json!({})) {
                    m.insert(k, v);
                }
            }
            _ => return Err(malformed()),
        }
    }
    Ok(out)
}

fn push(out: &mut Map<String, Value>, name: String, value: Value) {
    if let Value::Array(items) = out.entry(name).or_insert_with(|| json!([])) {
        items.push(value);
    }
}

/// Decodes a `k8s\0`-prefixed protobuf body into the JSON object it encodes.
pub fn decode_body(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(b"k8s\0").ok_or_else(malformed)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    let mut r = Reader { buf: envelope };
    while let Some((n, wire)) = r.next()? {
        match (n, wire) {
            (1, Wire::Bytes(type_meta)) => {
                let tm = decode(
                    type_meta,
                    &[(1, "apiVersion", Field::Str), (2, "kind", Field::Str)],
                )?;
                api_version = tm
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                kind = tm
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let schema = schema(&kind).ok_or_else(|| ApiError::unsupported_protobuf(&kind))?;
    let mut obj = decode(raw, schema)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let meta = [
            field(1, b"cm"),
            field(11, &[field(1, b"app"), field(2, b"web")].concat()),
        ]
        .concat();
        let raw = [
            field(1, &meta),
            field(2, &[field(1, b"k"), field(2, b"v")].concat()),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let obj = decode_body(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"app": "web"}}, "data": {"k": "v"}})
        );
    }
}
