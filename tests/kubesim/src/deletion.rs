//! Deletion: finalizers, the simulated namespace controller (cascade), garbage collection of
//! dependents by ownerReferences, and removal of a CRD's objects.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resource::ResourceType;
use crate::store::{
    Event, EventKind, NAMESPACE_FINALIZE_DELAY, Store, WriteCtx, meta_mut, meta_str,
};

impl Store {
    /// Deletes an object: marks it while finalizers remain, removes it otherwise; namespaces cascade.
    pub fn delete(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let existing = self
            .raw(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if ctx.dry_run {
            return Ok(Self::present(rt, &existing));
        }
        let is_namespace = rt.group.is_empty() && rt.kind == "Namespace";
        let has_finalizers = existing
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers && !is_namespace {
            self.remove(rt, ns, name, None);
            return Ok(Self::present(rt, &existing));
        }
        let mut marked = existing.clone();
        if marked.pointer("/metadata/deletionTimestamp").is_none() {
            let meta = meta_mut(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(ctx.now));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            if is_namespace {
                marked["status"] = json!({"phase": "Terminating"});
            }
        }
        let out = self.commit(rt, Some(existing), marked, false);
        if is_namespace {
            self.terminating
                .entry(name.to_string())
                .or_insert_with(std::time::Instant::now);
        }
        Ok(self.get(rt, ns, name).unwrap_or(out))
    }

    /// Whether some namespace is terminating (the namespace controller has work).
    pub fn has_terminating_namespaces(&self) -> bool {
        !self.terminating.is_empty()
    }

    /// The simulated namespace controller: deletes the contents of namespaces terminating for
    /// longer than [`NAMESPACE_FINALIZE_DELAY`], and removes them once empty.
    pub fn reap_namespaces(&mut self) {
        let due: Vec<String> = self
            .terminating
            .iter()
            .filter(|(_, since)| since.elapsed() >= NAMESPACE_FINALIZE_DELAY)
            .map(|(ns, _)| ns.clone())
            .collect();
        let ctx = WriteCtx::new("namespace-controller");
        for ns in due {
            self.empty_namespace(&ns, &ctx);
            self.finish_namespace(&ns);
            if self.namespace_state(&ns).is_none() {
                self.terminating.remove(&ns);
            }
        }
    }

    /// Deletes every object in a terminating namespace.
    fn empty_namespace(&mut self, ns: &str, ctx: &WriteCtx) {
        let victims: Vec<((String, String), String)> = self
            .objects
            .iter()
            .flat_map(|(key, objs)| {
                objs.keys()
                    .filter(|(o_ns, _)| o_ns == ns)
                    .map(move |(_, n)| (key.clone(), n.clone()))
            })
            .collect();
        for (key, name) in victims {
            if let Some(rt) = self.type_for_key(&key) {
                let _ = self.delete(&rt, ns, &name, ctx);
            }
        }
    }

    /// Removes a terminating namespace once nothing is left in it and it has no finalizers.
    pub(crate) fn finish_namespace(&mut self, ns: &str) {
        if self.namespace_state(ns) != Some(true) {
            return;
        }
        let occupied = self
            .objects
            .iter()
            .any(|(_, objs)| objs.keys().any(|(o_ns, _)| o_ns == ns));
        let ns_type = self
            .registry
            .by_kind("v1", "Namespace")
            .expect("Namespace is built in");
        let finalizers = self
            .raw(&ns_type, "", ns)
            .and_then(|o| o.pointer("/metadata/finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let due = self
            .terminating
            .get(ns)
            .is_none_or(|since| since.elapsed() >= NAMESPACE_FINALIZE_DELAY);
        if !occupied && !finalizers && due {
            self.remove(&ns_type, "", ns, None);
            self.terminating.remove(ns);
        }
    }

    /// Removes an object for good, then collects its dependents and finishes its namespace.
    pub(crate) fn remove(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        last: Option<Value>,
    ) {
        let key = rt.storage_key();
        let Some(stored) = self
            .objects
            .get_mut(&key)
            .and_then(|o| o.remove(&(ns.to_string(), name.to_string())))
        else {
            return;
        };
        let mut obj = last.unwrap_or(stored);
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let uid = meta_str(&obj, "uid").to_string();
        self.push_event(Event {
            rv: self.rv,
            key,
            namespace: ns.to_string(),
            kind: EventKind::Deleted,
            object: Arc::new(obj.clone()),
            prev: None,
        });
        tracing::debug!(kind = %rt.kind, ns, name, "removed");
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            crate::crd::unregister(self, &obj);
        }
        self.collect_dependents(&uid);
        if !ns.is_empty() {
            self.finish_namespace(ns);
        }
    }

    /// Background garbage collection: deletes objects whose ownerReferences name `uid`.
    fn collect_dependents(&mut self, uid: &str) {
        let dependents: Vec<((String, String), String, String)> = self
            .objects
            .iter()
            .flat_map(|(key, objs)| {
                objs.iter()
                    .filter(|(_, o)| {
                        o.pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
                    })
                    .map(move |((ns, name), _)| (key.clone(), ns.clone(), name.clone()))
            })
            .collect();
        let ctx = WriteCtx::new("kube-controller-manager");
        for (key, ns, name) in dependents {
            if let Some(rt) = self.type_for_key(&key) {
                let _ = self.delete(&rt, &ns, &name, &ctx);
            }
        }
    }

    /// Removes every object of a resource (its CRD went away).
    pub fn drop_resource(&mut self, key: &(String, String)) {
        let Some(rt) = self.type_for_key(key) else {
            return;
        };
        let names: Vec<(String, String)> = self
            .objects
            .get(key)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for (ns, name) in names {
            self.remove(&rt, &ns, &name, None);
        }
        self.objects.remove(key);
    }
}
