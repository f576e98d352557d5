//! The control group: one Raft group spanning every site that replicates
//! the federation's shared configuration (buses, rules with their targets,
//! and sources). Every node is a voter or a learner in it, so every node holds
//! the whole configuration locally.
//!
//! The control group's state machine is a [`crate::SiteState`] that only
//! ever sees configuration commands. A site does not route from it
//! directly: the site's leader *imports* it, writing the differences into
//! the site's own log as ordinary [`Command::PutBus`] / [`Command::PutRule`]
//! / [`Command::PutSource`] / [`Command::DeleteRule`] /
//! [`Command::DeleteSource`] / [`Command::DeleteBus`] entries followed by
//! [`Command::ConfigVersion`]. So a rule change takes effect at one position
//! of each site's log (every event is routed by exactly one version of a
//! rule), a site keeps routing with the configuration it has when the WAN
//! (or the control group's quorum) is gone, and a new target's cursor
//! starts at the head of the site's bus as for a local change.
//!
//! [`plan`] is the pure part: the commands that turn a site's configuration
//! into the control group's.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::command::Command;
use crate::store::state::View;

/// The configuration of one control-group version, as a site imports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedConfig {
    /// The control group's applied log index this is the state of.
    pub version: u64,
    /// Bus name → definition.
    pub buses: std::collections::BTreeMap<String, Value>,
    /// (bus, rule) → definition.
    pub rules: std::collections::BTreeMap<(String, String), Value>,
    /// Source name → definition (each names the site that runs it).
    pub sources: std::collections::BTreeMap<String, Value>,
}

impl SharedConfig {
    /// The configuration held by a control group's state.
    pub fn of(view: &View) -> SharedConfig {
        SharedConfig {
            version: view.last_applied.map(|l| l.index).unwrap_or(0),
            buses: view.buses.clone(),
            rules: view.rules.clone(),
            sources: view.sources.clone(),
        }
    }
}

/// Target ids of a stored rule definition (`targets[].id`).
pub fn target_ids(spec: &Value) -> Vec<String> {
    spec.get("targets")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The commands that make a site whose configuration is `site` run
/// `shared`: buses created or updated first, then rules put, then sources
/// put, then rules and sources that are no longer shared deleted, then
/// buses that are neither shared nor in `keep_buses` (the node's configured
/// buses) deleted; last the version marker. (A bus is deleted only after
/// the rules and sources on it, which the state machine insists on.) Empty when the site already runs this version.
pub fn plan(shared: &SharedConfig, site: &View, keep_buses: &[String]) -> Vec<Command> {
    let mut out = Vec::new();
    for (name, spec) in &shared.buses {
        if site.buses.get(name) != Some(spec) {
            out.push(Command::PutBus {
                name: name.clone(),
                spec: spec.clone(),
            });
        }
    }
    for ((bus, name), spec) in &shared.rules {
        if site.rules.get(&(bus.clone(), name.clone())) != Some(spec) {
            out.push(Command::PutRule {
                bus: bus.clone(),
                name: name.clone(),
                spec: spec.clone(),
                targets: target_ids(spec),
            });
        }
    }
    for (name, spec) in &shared.sources {
        if site.sources.get(name) != Some(spec) {
            out.push(Command::PutSource {
                name: name.clone(),
                spec: spec.clone(),
            });
        }
    }
    for (bus, name) in site.rules.keys() {
        if !shared.rules.contains_key(&(bus.clone(), name.clone())) {
            out.push(Command::DeleteRule {
                bus: bus.clone(),
                name: name.clone(),
            });
        }
    }
    for name in site.sources.keys() {
        if !shared.sources.contains_key(name) {
            out.push(Command::DeleteSource { name: name.clone() });
        }
    }
    let keep: BTreeSet<&String> = keep_buses.iter().collect();
    for name in site.buses.keys() {
        if !shared.buses.contains_key(name) && !keep.contains(name) {
            out.push(Command::DeleteBus { name: name.clone() });
        }
    }
    if !out.is_empty() || site.config_version < shared.version {
        out.push(Command::ConfigVersion {
            version: shared.version,
        });
    }
    out
}

/// Whether `view` (a replica of the control group) shows the effect of
/// the configuration command `cmd`; `None` for a command without one to
/// check. A node that wrote `cmd` through the control group's leader uses
/// it to wait until its own replica has applied the change: the leader
/// answers once a quorum has it, which need not include this node.
pub fn shows(view: &View, cmd: &Command) -> Option<bool> {
    Some(match cmd {
        Command::PutBus { name, spec } => view.buses.get(name) == Some(spec),
        Command::DeleteBus { name } => !view.buses.contains_key(name),
        Command::PutRule {
            bus, name, spec, ..
        } => view.rules.get(&(bus.clone(), name.clone())) == Some(spec),
        Command::DeleteRule { bus, name } => !view.rules.contains_key(&(bus.clone(), name.clone())),
        Command::PutSource { name, spec } => view.sources.get(name) == Some(spec),
        Command::DeleteSource { name } => !view.sources.contains_key(name),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(target: &str) -> Value {
        json!({"pattern": {"source": ["a"]}, "targets": [{"id": target, "type": "http"}]})
    }

    fn names(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .map(|c| match c {
                Command::PutBus { name, .. } => format!("put-bus {name}"),
                Command::DeleteBus { name } => format!("delete-bus {name}"),
                Command::PutRule {
                    bus, name, targets, ..
                } => format!("put-rule {bus}/{name} {targets:?}"),
                Command::DeleteRule { bus, name } => format!("delete-rule {bus}/{name}"),
                Command::PutSource { name, spec } => format!("put-source {name} {spec}"),
                Command::DeleteSource { name } => format!("delete-source {name}"),
                Command::ConfigVersion { version } => format!("version {version}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_replica_shows_a_change_once_it_has_applied_it() {
        let mut view = View::default();
        let put = Command::PutRule {
            bus: "b".into(),
            name: "r".into(),
            spec: rule("t"),
            targets: vec!["t".into()],
        };
        let delete = Command::DeleteRule {
            bus: "b".into(),
            name: "r".into(),
        };
        assert_eq!(shows(&view, &put), Some(false));
        assert_eq!(shows(&view, &delete), Some(true));
        view.rules.insert(("b".into(), "r".into()), rule("other"));
        assert_eq!(shows(&view, &put), Some(false), "an older definition");
        view.rules.insert(("b".into(), "r".into()), rule("t"));
        assert_eq!(shows(&view, &put), Some(true));
        assert_eq!(shows(&view, &delete), Some(false));
        let bus = Command::PutBus {
            name: "b".into(),
            spec: json!({"name": "b"}),
        };
        assert_eq!(shows(&view, &bus), Some(false));
        view.buses.insert("b".into(), json!({"name": "b"}));
        assert_eq!(shows(&view, &bus), Some(true));
        assert_eq!(
            shows(&view, &Command::DeleteSource { name: "s".into() }),
            Some(true)
        );
        assert_eq!(shows(&view, &Command::ConfigVersion { version: 1 }), None);
    }

    #[test]
    fn a_site_converges_on_the_shared_configuration() {
        let mut shared = SharedConfig {
            version: 7,
            ..Default::default()
        };
        shared
            .buses
            .insert("orders".into(), json!({"name": "orders"}));
        shared
            .rules
            .insert(("orders".into(), "r1".into()), rule("t1"));
        let mut site = View::default();
        site.buses
            .insert("default".into(), json!({"name": "default"}));
        site.buses.insert("old".into(), json!({"name": "old"}));
        site.rules.insert(("old".into(), "gone".into()), rule("x"));
        let cmds = plan(&shared, &site, &["default".to_string()]);
        assert_eq!(
            names(&cmds),
            [
                "put-bus orders",
                "put-rule orders/r1 [\"t1\"]",
                "delete-rule old/gone",
                "delete-bus old",
                "version 7"
            ]
        );
    }

    #[test]
    fn nothing_to_do_when_the_site_is_current_and_a_changed_rule_is_put_again() {
        let mut shared = SharedConfig {
            version: 3,
            ..Default::default()
        };
        shared.buses.insert("b".into(), json!({"name": "b"}));
        shared.rules.insert(("b".into(), "r".into()), rule("t1"));
        let mut site = View {
            config_version: 3,
            ..Default::default()
        };
        site.buses = shared.buses.clone();
        site.rules = shared.rules.clone();
        assert!(plan(&shared, &site, &[]).is_empty());
        // Same content at a newer version: only the marker moves.
        shared.version = 4;
        assert_eq!(names(&plan(&shared, &site, &[])), ["version 4"]);
        // A changed rule is put again, with its new targets.
        shared.rules.insert(("b".into(), "r".into()), rule("t2"));
        assert_eq!(
            names(&plan(&shared, &site, &[])),
            ["put-rule b/r [\"t2\"]", "version 4"]
        );
    }

    fn source(bus: &str, site: &str) -> Value {
        json!({"type": "aws_sqs", "bus": bus, "site": site, "queueUrl": "http://q/1/q"})
    }

    #[test]
    fn sources_are_put_after_their_bus_and_deleted_before_it() {
        let mut shared = SharedConfig {
            version: 9,
            ..Default::default()
        };
        shared.buses.insert("in".into(), json!({"name": "in"}));
        shared.sources.insert("new".into(), source("in", "aws"));
        shared.sources.insert("same".into(), source("in", "idc"));
        let mut site = View::default();
        site.buses.insert("old".into(), json!({"name": "old"}));
        site.sources.insert("gone".into(), source("old", "aws"));
        site.sources.insert("same".into(), source("in", "idc"));
        assert_eq!(
            names(&plan(&shared, &site, &[])),
            [
                "put-bus in",
                format!("put-source new {}", source("in", "aws")).as_str(),
                "delete-source gone",
                "delete-bus old",
                "version 9"
            ]
        );
    }

    #[test]
    fn a_source_moved_to_another_site_is_put_again_and_an_equal_one_is_left_alone() {
        let mut shared = SharedConfig {
            version: 5,
            ..Default::default()
        };
        shared.buses.insert("b".into(), json!({"name": "b"}));
        shared.sources.insert("s".into(), source("b", "idc"));
        let mut site = View {
            config_version: 5,
            ..Default::default()
        };
        site.buses = shared.buses.clone();
        site.sources = shared.sources.clone();
        assert!(plan(&shared, &site, &[]).is_empty());
        shared.version = 6;
        shared.sources.insert("s".into(), source("b", "aws"));
        assert_eq!(
            names(&plan(&shared, &site, &[])),
            [
                format!("put-source s {}", source("b", "aws")).as_str(),
                "version 6"
            ]
        );
    }
}
