//! Table tests of the apply planner. Each case lists the plan it expects, one line per app in
//! run order, written by `summary` below.

use flotilla_common::cluster_state::DriftMode;
use flotilla_common::digest::Digest;

use super::*;
use crate::inventory::AppliedObject;

/// `Kind/name`, with `group/Kind/name` for other groups; namespaced kinds go to `default`.
fn id(spec: &str) -> ObjectId {
    let parts: Vec<&str> = spec.split('/').collect();
    let (group, kind, name) = match parts.as_slice() {
        [kind, name] => ("", *kind, *name),
        [group, kind, name] => (*group, *kind, *name),
        _ => panic!("bad object spec {spec}"),
    };
    let cluster_scoped = matches!(
        kind,
        "Namespace" | "CustomResourceDefinition" | "ClusterRole"
    );
    ObjectId {
        group: group.into(),
        version: "v1".into(),
        kind: kind.into(),
        namespace: (!cluster_scoped).then(|| "default".into()),
        name: name.into(),
    }
}

fn show(id: &ObjectId) -> String {
    format!("{}/{}", kind_key(id), id.name)
}

struct App {
    name: &'static str,
    objects: &'static [&'static str],
    depends_on: &'static [&'static str],
    prune: bool,
    prune_protect: &'static [&'static str],
}

const fn app(name: &'static str, objects: &'static [&'static str]) -> App {
    App {
        name,
        objects,
        depends_on: &[],
        prune: true,
        prune_protect: &[],
    }
}

impl App {
    const fn after(mut self, deps: &'static [&'static str]) -> Self {
        self.depends_on = deps;
        self
    }
    const fn no_prune(mut self) -> Self {
        self.prune = false;
        self
    }
    const fn unprotect(mut self, kinds: &'static [&'static str]) -> Self {
        self.prune_protect = kinds;
        self
    }

    fn state(&self) -> AppState {
        AppState {
            name: self.name.into(),
            source: "main".into(),
            commit: format!("{}-commit", self.name),
            release_id: "r".into(),
            depends_on: self.depends_on.iter().map(|d| d.to_string()).collect(),
            drift: DriftMode::Correct,
            prune: self.prune,
            prune_protect: self.prune_protect.iter().map(|k| k.to_string()).collect(),
            force: false,
            chart: None,
            origin: String::new(),
            objects: self
                .objects
                .iter()
                .map(|o| ObjectEntry {
                    id: id(o),
                    digest: Digest::of(o.as_bytes()),
                    size: o.len() as u64,
                })
                .collect(),
        }
    }

    fn inventory(&self) -> AppInventory {
        let mut inv = AppInventory {
            prune: self.prune,
            prune_protect: self.prune_protect.iter().map(|k| k.to_string()).collect(),
            objects: Vec::new(),
        };
        for o in self.objects {
            inv.insert(id(o), Digest::of(b"old"));
        }
        inv
    }
}

fn summary(plan: &ApplyPlan) -> Vec<String> {
    let list = |ids: &mut dyn Iterator<Item = &ObjectId>| -> String {
        ids.map(show).collect::<Vec<_>>().join(" ")
    };
    plan.apps
        .iter()
        .map(|p| {
            let name = if p.removed {
                format!("{} (removed)", p.app)
            } else {
                p.app.clone()
            };
            match &p.step {
                AppStep::Skip { phase, message } => {
                    format!("{name}: {}: {message}", phase.as_str())
                }
                AppStep::Apply(c) => {
                    let mut parts = Vec::new();
                    if c.early > 0 {
                        parts.push(format!(
                            "early {}",
                            list(&mut c.writes[..c.early].iter().map(|w| &w.id))
                        ));
                    }
                    if c.writes.len() > c.early {
                        parts.push(format!(
                            "write {}",
                            list(&mut c.writes[c.early..].iter().map(|w| &w.id))
                        ));
                    }
                    for (label, ids) in [
                        ("delete", &c.deletes),
                        ("withhold", &c.withheld),
                        ("release", &c.released),
                    ] {
                        if !ids.is_empty() {
                            parts.push(format!("{label} {}", list(&mut ids.iter())));
                        }
                    }
                    if let Some(failure) = &c.failure {
                        parts.push(format!("failed: {failure}"));
                    }
                    if parts.is_empty() {
                        parts.push("nothing".into());
                    }
                    format!("{name}: {}", parts.join("; "))
                }
            }
        })
        .collect()
}

struct Case {
    name: &'static str,
    desired: Vec<App>,
    /// What each app applied before, written as the app that applied it.
    applied: Vec<App>,
    budget: u32,
    /// Deletion window in seconds, and deletions already made in it.
    window: u64,
    deleted_in_window: u32,
    override_budget: bool,
    want: &'static [&'static str],
}

fn case(
    name: &'static str,
    desired: Vec<App>,
    applied: Vec<App>,
    want: &'static [&'static str],
) -> Case {
    Case {
        name,
        desired,
        applied,
        budget: 50,
        window: 0,
        deleted_in_window: 0,
        override_budget: false,
        want,
    }
}

fn run(case: &Case) -> Vec<String> {
    let desired: Vec<AppState> = case.desired.iter().map(App::state).collect();
    let inventory: BTreeMap<String, AppInventory> = case
        .applied
        .iter()
        .map(|a| (a.name.to_string(), a.inventory()))
        .collect();
    summary(&plan(PlanInput {
        desired: &desired,
        inventory: &inventory,
        deletion_budget: case.budget,
        deletion_window: Duration::from_secs(case.window),
        deleted_in_window: case.deleted_in_window,
        override_budget: case.override_budget,
    }))
}

#[test]
fn prune_rules() {
    let cases = vec![
        case(
            "first apply writes everything and deletes nothing",
            vec![app("web", &["ConfigMap/a", "Service/b"])],
            vec![],
            &["web: write ConfigMap/a Service/b"],
        ),
        case(
            "an object that left the app is deleted",
            vec![app("web", &["ConfigMap/a"])],
            vec![app("web", &["ConfigMap/a", "ConfigMap/old"])],
            &["web: write ConfigMap/a; delete ConfigMap/old"],
        ),
        case(
            "prune off releases instead of deleting",
            vec![app("web", &["ConfigMap/a"]).no_prune()],
            vec![app("web", &["ConfigMap/a", "ConfigMap/old"])],
            &["web: write ConfigMap/a; release ConfigMap/old"],
        ),
        case(
            "only the app's own inventory is considered",
            vec![app("web", &[]), app("db", &["ConfigMap/d"])],
            vec![app("db", &["ConfigMap/d"])],
            &["db: write ConfigMap/d", "web: nothing"],
        ),
        case(
            "an object that moved to another app is not deleted",
            vec![app("a", &[]), app("b", &["ConfigMap/moved"])],
            vec![app("a", &["ConfigMap/moved"])],
            &["a: release ConfigMap/moved", "b: write ConfigMap/moved"],
        ),
        case(
            "an empty desired set deletes the app's objects (within budget)",
            vec![app("web", &[])],
            vec![app("web", &["ConfigMap/a", "Secret/s"])],
            &["web: delete ConfigMap/a Secret/s"],
        ),
    ];
    check(cases);
}

#[test]
fn apply_order_within_an_app() {
    check(vec![case(
        "CRDs, then Namespaces, then cluster-scoped, then namespaced objects",
        vec![app(
            "platform",
            &[
                "ConfigMap/a",
                "example.com/Widget/w",
                "rbac.authorization.k8s.io/ClusterRole/r",
                "Namespace/ns",
                "apiextensions.k8s.io/CustomResourceDefinition/widgets.example.com",
            ],
        )],
        vec![],
        &[
            "platform: early apiextensions.k8s.io/CustomResourceDefinition/widgets.example.com \
           Namespace/ns; write rbac.authorization.k8s.io/ClusterRole/r ConfigMap/a \
           example.com/Widget/w",
        ],
    )]);
}

#[test]
fn namespaces_and_crds_go_early_across_apps() {
    check(vec![
        case(
            "an app's namespace declared by another app is written before either app's objects",
            vec![
                app("a-web", &["ConfigMap/config"]),
                app("z-platform", &["Namespace/shared", "ConfigMap/z"]),
            ],
            vec![],
            &[
                "a-web: write ConfigMap/config",
                "z-platform: early Namespace/shared; write ConfigMap/z",
            ],
        ),
        case(
            "an app with dependencies keeps all its writes behind them",
            vec![
                app("base", &["ConfigMap/b"]),
                app(
                    "crds",
                    &["apiextensions.k8s.io/CustomResourceDefinition/widgets"],
                ),
                app("team", &["Namespace/team", "example.com/Widget/w"]).after(&["base"]),
            ],
            vec![],
            &[
                "base: write ConfigMap/b",
                "crds: early apiextensions.k8s.io/CustomResourceDefinition/widgets",
                "team: write Namespace/team example.com/Widget/w",
            ],
        ),
        case(
            "a failed app writes nothing early",
            vec![
                app("a", &["Namespace/x"]).after(&["missing"]),
                app("b", &["Namespace/y"]),
            ],
            vec![],
            &[
                "a: failed: depends on unknown app missing",
                "b: early Namespace/y",
            ],
        ),
    ]);
}

#[test]
fn protected_kinds() {
    let before = || {
        vec![app(
            "platform",
            &[
                "Namespace/team",
                "PersistentVolumeClaim/data",
                "apiextensions.k8s.io/CustomResourceDefinition/widgets",
                "example.com/CustomResourceDefinition/lookalike",
                "ConfigMap/c",
            ],
        )]
    };
    let cases = vec![
        case(
            "Namespaces, PVCs and CRDs are never pruned by default",
            vec![app("platform", &[])],
            before(),
            &[
                "platform: delete ConfigMap/c example.com/CustomResourceDefinition/lookalike; \
               release Namespace/team PersistentVolumeClaim/data \
               apiextensions.k8s.io/CustomResourceDefinition/widgets",
            ],
        ),
        case(
            "PersistentVolumes are protected too, unless listed",
            vec![app("storage", &[])],
            vec![app("storage", &["PersistentVolume/pv-1", "ConfigMap/c"])],
            &["storage: delete ConfigMap/c; release PersistentVolume/pv-1"],
        ),
        case(
            "a listed PersistentVolume may be pruned",
            vec![app("storage", &[]).unprotect(&["PersistentVolume"])],
            vec![app("storage", &["PersistentVolume/pv-1"])],
            &["storage: delete PersistentVolume/pv-1"],
        ),
        case(
            "prune_protect lists the kinds prune may delete",
            vec![
                app("platform", &[])
                    .unprotect(&["Namespace", "apiextensions.k8s.io/CustomResourceDefinition"]),
            ],
            before(),
            &["platform: delete ConfigMap/c Namespace/team \
               apiextensions.k8s.io/CustomResourceDefinition/widgets \
               example.com/CustomResourceDefinition/lookalike; \
               release PersistentVolumeClaim/data"],
        ),
        case(
            "a bare CustomResourceDefinition entry does not match the apiextensions group",
            vec![
                app("platform", &[])
                    .unprotect(&["CustomResourceDefinition", "PersistentVolumeClaim"]),
            ],
            before(),
            &["platform: delete ConfigMap/c PersistentVolumeClaim/data \
               example.com/CustomResourceDefinition/lookalike; \
               release Namespace/team apiextensions.k8s.io/CustomResourceDefinition/widgets"],
        ),
    ];
    check(cases);
}

#[test]
fn deletion_budget() {
    let old = || vec![app("web", &["ConfigMap/a", "ConfigMap/b", "ConfigMap/c"])];
    let cases = vec![
        Case {
            budget: 3,
            ..case(
                "exactly the budget is allowed",
                vec![app("web", &["ConfigMap/new"])],
                old(),
                &["web: write ConfigMap/new; delete ConfigMap/a ConfigMap/b ConfigMap/c"],
            )
        },
        Case {
            budget: 2,
            ..case(
                "over budget withholds every deletion but still writes",
                vec![app("web", &["ConfigMap/new"])],
                old(),
                &[
                    "web: write ConfigMap/new; withhold ConfigMap/a ConfigMap/b ConfigMap/c; \
                   failed: 3 deletions exceed the deletion budget of 2; withheld 3 of this \
                   app's deletions (restart the agent with --override-deletion-budget to allow them)",
                ],
            )
        },
        Case {
            budget: 2,
            override_budget: true,
            ..case(
                "the override lifts the budget",
                vec![app("web", &["ConfigMap/new"])],
                old(),
                &["web: write ConfigMap/new; delete ConfigMap/a ConfigMap/b ConfigMap/c"],
            )
        },
        Case {
            budget: 3,
            ..case(
                "the budget is for the whole plan, not per app",
                vec![app("a", &[]), app("b", &[]), app("c", &["ConfigMap/keep"])],
                vec![
                    app("a", &["ConfigMap/a1", "ConfigMap/a2"]),
                    app("b", &["ConfigMap/b1", "ConfigMap/b2"]),
                ],
                &[
                    "a: withhold ConfigMap/a1 ConfigMap/a2; failed: 4 deletions exceed the \
                     deletion budget of 3; withheld 2 of this app's deletions (restart the agent \
                     with --override-deletion-budget to allow them)",
                    "b: withhold ConfigMap/b1 ConfigMap/b2; failed: 4 deletions exceed the \
                     deletion budget of 3; withheld 2 of this app's deletions (restart the agent \
                     with --override-deletion-budget to allow them)",
                    "c: write ConfigMap/keep",
                ],
            )
        },
        Case {
            budget: 5,
            window: 3600,
            deleted_in_window: 2,
            ..case(
                "deletions made earlier in the window count",
                vec![app("web", &["ConfigMap/new"])],
                old(),
                &["web: write ConfigMap/new; delete ConfigMap/a ConfigMap/b ConfigMap/c"],
            )
        },
        Case {
            budget: 4,
            window: 3600,
            deleted_in_window: 2,
            ..case(
                "a sequence of states cannot exceed the budget within the window",
                vec![app("web", &["ConfigMap/new"])],
                old(),
                &[
                    "web: write ConfigMap/new; withhold ConfigMap/a ConfigMap/b ConfigMap/c; \
                   failed: 3 deletions exceed the deletion budget of 4 per 1h: 2 already made \
                   in the last 1h; withheld 3 of this app's deletions until the window allows \
                   them (or restart the agent with --override-deletion-budget)",
                ],
            )
        },
        Case {
            budget: 4,
            window: 0,
            deleted_in_window: 2,
            ..case(
                "without a window only the plan counts",
                vec![app("web", &["ConfigMap/new"])],
                old(),
                &["web: write ConfigMap/new; delete ConfigMap/a ConfigMap/b ConfigMap/c"],
            )
        },
        Case {
            budget: 1,
            window: 3600,
            deleted_in_window: 40,
            ..case(
                "a plan without deletions is never over budget",
                vec![app("web", &["ConfigMap/a"])],
                vec![app("web", &["ConfigMap/a"])],
                &["web: write ConfigMap/a"],
            )
        },
        Case {
            budget: 0,
            ..case(
                "released objects do not count against the budget",
                vec![app("web", &[]).no_prune()],
                old(),
                &["web: release ConfigMap/a ConfigMap/b ConfigMap/c"],
            )
        },
    ];
    check(cases);
}

#[test]
fn dependency_order() {
    let cases = vec![
        case(
            "dependencies run first whatever the names",
            vec![
                app("a-frontend", &["ConfigMap/f"]).after(&["m-backend"]),
                app("m-backend", &["ConfigMap/b"]).after(&["z-crds"]),
                app("z-crds", &["ConfigMap/c"]),
            ],
            vec![],
            &[
                "z-crds: write ConfigMap/c",
                "m-backend: write ConfigMap/b",
                "a-frontend: write ConfigMap/f",
            ],
        ),
        case(
            "a cycle fails its members and holds back what depends on it",
            vec![
                app("a", &["ConfigMap/a"]).after(&["b"]),
                app("b", &["ConfigMap/b"]).after(&["a"]),
                app("c", &["ConfigMap/c"]).after(&["a"]),
                app("d", &["ConfigMap/d"]),
            ],
            vec![],
            &[
                "d: write ConfigMap/d",
                "a: failed: dependency cycle: a -> b -> a",
                "b: failed: dependency cycle: b -> a -> b",
                "c: pending: waiting for dependency a",
            ],
        ),
        case(
            "an app depending on itself is a cycle",
            vec![app("a", &["ConfigMap/a"]).after(&["a"])],
            vec![],
            &["a: failed: dependency cycle: a -> a"],
        ),
        case(
            "an unknown dependency fails the app and its dependents wait",
            vec![
                app("a", &["ConfigMap/a"]).after(&["ghost"]),
                app("b", &["ConfigMap/b"]).after(&["a"]),
                app("c", &["ConfigMap/c"]).after(&["b"]),
            ],
            vec![],
            &[
                "a: failed: depends on unknown app ghost",
                "b: pending: waiting for dependency a",
                "c: pending: waiting for dependency b",
            ],
        ),
        case(
            "an object claimed by two apps fails the second",
            vec![
                app("a", &["ConfigMap/shared"]),
                app("b", &["ConfigMap/shared", "ConfigMap/own"]),
                app("c", &["ConfigMap/c"]).after(&["b"]),
            ],
            vec![],
            &[
                "a: write ConfigMap/shared",
                "b: failed: object v1/ConfigMap default/shared is also in app a",
                "c: pending: waiting for dependency b",
            ],
        ),
        Case {
            budget: 0,
            ..case(
                "an app failed over budget holds back its dependents",
                vec![
                    app("base", &["ConfigMap/keep"]),
                    app("top", &["ConfigMap/t"]).after(&["base"]),
                ],
                vec![app("base", &["ConfigMap/keep", "ConfigMap/gone"])],
                &[
                    "base: write ConfigMap/keep; withhold ConfigMap/gone; failed: 1 deletions \
                     exceed the deletion budget of 0; withheld 1 of this app's deletions (restart \
                     the agent with --override-deletion-budget to allow them)",
                    "top: pending: waiting for dependency base",
                ],
            )
        },
    ];
    check(cases);
}

#[test]
fn removed_apps() {
    let cases = vec![
        case(
            "an app removed from the ClusterState is pruned after the others",
            vec![app("web", &["ConfigMap/w"])],
            vec![
                app("old", &["ConfigMap/o1", "Namespace/old"]),
                app("web", &["ConfigMap/w"]),
            ],
            &[
                "web: write ConfigMap/w",
                "old (removed): delete ConfigMap/o1; release Namespace/old",
            ],
        ),
        case(
            "a removed app keeps the prune settings it last had",
            vec![],
            vec![
                app("keep", &["ConfigMap/k"]).no_prune(),
                app("ns", &["Namespace/n"]).unprotect(&["Namespace"]),
            ],
            &[
                "keep (removed): release ConfigMap/k",
                "ns (removed): delete Namespace/n",
            ],
        ),
        Case {
            budget: 1,
            ..case(
                "removed apps count against the budget",
                vec![],
                vec![app("old", &["ConfigMap/a", "ConfigMap/b"])],
                &[
                    "old (removed): withhold ConfigMap/a ConfigMap/b; failed: 2 deletions exceed \
                   the deletion budget of 1; withheld 2 of this app's deletions (restart the \
                   agent with --override-deletion-budget to allow them)",
                ],
            )
        },
        case(
            "an object a removed app had, now in another app, is released",
            vec![app("new", &["ConfigMap/x"])],
            vec![app("old", &["ConfigMap/x"])],
            &[
                "new: write ConfigMap/x",
                "old (removed): release ConfigMap/x",
            ],
        ),
    ];
    check(cases);
}

#[test]
fn inventory_digests_do_not_change_writes() {
    // Level-based: every desired object is written; the target skips identical bytes.
    let desired = [app("web", &["ConfigMap/a"]).state()];
    let mut inv = AppInventory::default();
    inv.objects.push(AppliedObject {
        id: id("ConfigMap/a"),
        digest: desired[0].objects[0].digest,
    });
    let inventory = BTreeMap::from([("web".to_string(), inv)]);
    let plan = plan(PlanInput {
        desired: &desired,
        inventory: &inventory,
        deletion_budget: 0,
        deletion_window: Duration::ZERO,
        deleted_in_window: 0,
        override_budget: false,
    });
    assert_eq!(summary(&plan), ["web: write ConfigMap/a"]);
    assert_eq!(plan.apps[0].commit, "web-commit");
}

fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in &cases {
        let got = run(case);
        let want: Vec<String> = case.want.iter().map(|s| s.to_string()).collect();
        if got != want {
            failures.push(format!(
                "case {:?}\n  got:  {got:#?}\n  want: {want:#?}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn deletions_in_the_window() {
    let log = [(100, 5), (3000, 4), (3700, 1)];
    let hour = Duration::from_secs(3600);
    let cases: &[(&str, i64, Duration, u32)] = &[
        ("everything within the hour", 3699, hour, 10),
        ("an entry exactly a window old has left it", 3800, hour, 5),
        ("later, only the newest", 6650, hour, 1),
        ("all gone", 7300, hour, 0),
        ("a zero window counts nothing", 3700, Duration::ZERO, 0),
    ];
    for (what, now, window, want) in cases {
        assert_eq!(deleted_in_window(&log, *now, *window), *want, "{what}");
    }
}
