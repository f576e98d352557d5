//! `/v1/buses/{bus}/rules` and `/v1/buses/{bus}/rules/{rule}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use strait_federation::Command;
use strait_federation::store::state::{dead_letter_buses, target_key};

use crate::config::rule::RuleSpec;
use crate::http::Resources;
use crate::http::body::read_json;
use crate::http::error::{ApiError, ApiResult, command_result};
use crate::http::shared::{bus_must_exist, check_name, share_bus};

fn rule_view(res: &Resources, bus: &str, name: &str, spec: &Value, with_status: bool) -> Value {
    let mut v = crate::config::rule::masked(spec);
    v["name"] = json!(name);
    v["bus"] = json!(bus);
    if with_status {
        // The replicated counters (a follower has no live figures; a new
        // leader's start from them).
        let replicated_counts = res.state.target_counts().unwrap_or_default();
        let mut targets = serde_json::Map::new();
        if let Some(ts) = spec.get("targets").and_then(Value::as_array) {
            for t in ts {
                let Some(id) = t.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let key = target_key(bus, name, id);
                let replicated = res.state.view().cursors.get(&key).copied().unwrap_or(0);
                let live = crate::dispatch::stats(&res.progress, &key);
                let counts = replicated_counts.get(&key).cloned().unwrap_or_default();
                let live = match live {
                    Some(l)
                        if l.delivered + l.dead_lettered + l.dropped + l.failed_attempts
                            >= counts.delivered
                                + counts.dead_lettered
                                + counts.dropped
                                + counts.failed_attempts =>
                    {
                        l
                    }
                    l => crate::dispatch::TargetStats {
                        cursor: l.map(|l| l.cursor).unwrap_or(0),
                        delivered: counts.delivered,
                        dead_lettered: counts.dead_lettered,
                        dropped: counts.dropped,
                        dead_letter_failed: counts.dead_letter_failed,
                        last_dead_letter_error: counts.last_dead_letter_error,
                        failed_attempts: counts.failed_attempts,
                        last_error: counts.last_error,
                    },
                };
                let cursor = live.cursor.max(replicated);
                let lag = res
                    .state
                    .count_events_from(bus, cursor, 1_000_000)
                    .unwrap_or(0);
                targets.insert(
                    id.to_string(),
                    json!({
                        "cursor": cursor,
                        "checkpoint": replicated,
                        "delivered": live.delivered,
                        "deadLettered": live.dead_lettered,
                        "dropped": live.dropped,
                        "deadLetterFailed": live.dead_letter_failed,
                        "lastDeadLetterError": live.last_dead_letter_error,
                        "failedAttempts": live.failed_attempts,
                        "lastError": live.last_error,
                        "lag": lag,
                    }),
                );
            }
        }
        v["status"] = json!({"targets": targets});
    }
    v
}

pub(super) async fn list(
    State(res): State<Arc<Resources>>,
    Path(bus): Path<String>,
) -> ApiResult<Json<Value>> {
    bus_must_exist(&res.state, &bus)?;
    let rules: Vec<(String, Value)> = res
        .state
        .view()
        .rules
        .iter()
        .filter(|((b, _), _)| *b == bus)
        .map(|((_, r), v)| (r.clone(), v.clone()))
        .collect();
    let out: Vec<Value> = rules
        .iter()
        .map(|(r, v)| rule_view(&res, &bus, r, v, false))
        .collect();
    Ok(Json(json!({"rules": out})))
}

pub(super) async fn get(
    State(res): State<Arc<Resources>>,
    Path((bus, rule)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    bus_must_exist(&res.state, &bus)?;
    let spec = res
        .state
        .view()
        .rules
        .get(&(bus.clone(), rule.clone()))
        .cloned();
    match spec {
        Some(s) => {
            let mut v = rule_view(&res, &bus, &rule, &s, true);
            // Targets at other sites: their progress from those sites.
            res.sites.rule_status(&bus, &rule, &mut v).await;
            Ok(Json(v))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "RuleNotFound",
            format!("rule `{rule}` does not exist on bus `{bus}`"),
        )),
    }
}

pub(super) async fn put(
    State(res): State<Arc<Resources>>,
    Path((bus, rule)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    check_name("rule", &rule)?;
    bus_must_exist(&res.state, &bus)?;
    let mut v = read_json(body, res.max_request_bytes).await?;
    if let Some(m) = v.as_object_mut() {
        // Echoed fields from a GET are fine to send back.
        m.remove("name");
        m.remove("bus");
        m.remove("status");
    }
    // Header values a GET showed as `***` keep their stored values.
    let old = res
        .state
        .view()
        .rules
        .get(&(bus.clone(), rule.clone()))
        .cloned();
    crate::config::rule::unmask(&mut v, old.as_ref());
    let mut spec = RuleSpec::from_json(&v)?;
    for (i, t) in spec.targets.iter_mut().enumerate() {
        if res.config.shared().is_some() && t.site.is_none() {
            // Shared rules run everywhere: a target without a site is
            // delivered by the site it was created at.
            t.site = Some(res.site.clone());
        }
        if let Some(site) = &t.site
            && *site != res.site
            && !res.linked_sites.contains(site)
        {
            let known: Vec<&String> = std::iter::once(&res.site)
                .chain(res.linked_sites.iter())
                .collect();
            return Err(ApiError::bad_request(
                "UnknownSite",
                format!(
                    "targets[{i}].site: no link from site {:?} to site {site:?} (known sites: {known:?})",
                    res.site
                ),
            ));
        }
    }
    // Credentials, connections and egress of this site's node.
    spec.check_here(&res.site, &res.sinks)?;
    let stored = serde_json::to_value(&spec).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })?;
    let targets = spec.targets.iter().map(|t| t.id.clone()).collect();
    share_bus(&res, &bus).await?;
    // A dead-letter bus this site has from its configuration is shared
    // too, so that every site can store dead letters on it. (Whether it
    // exists is checked when the rule is committed.)
    for (_, dl_bus) in dead_letter_buses(&stored) {
        share_bus(&res, dl_bus).await?;
    }
    command_result(
        res.config
            .write(Command::PutRule {
                bus: bus.clone(),
                name: rule.clone(),
                spec: stored.clone(),
                targets,
            })
            .await?,
    )?;
    Ok(Json(rule_view(&res, &bus, &rule, &stored, false)))
}

pub(super) async fn delete(
    State(res): State<Arc<Resources>>,
    Path((bus, rule)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    command_result(
        res.config
            .write(Command::DeleteRule { bus, name: rule })
            .await?,
    )?;
    Ok(Json(json!({"deleted": true})))
}
