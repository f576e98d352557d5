//! Checks and writes that several resources share.

use axum::http::StatusCode;
use strait_federation::Command;

use crate::app::App;
use crate::config::check::validate_name;
use crate::http::error::{ApiError, ApiResult, command_result};

pub(super) fn check_name(kind: &str, name: &str) -> ApiResult<()> {
    validate_name(kind, name).map_err(|e| ApiError::bad_request(e.code, e.message))
}

pub(crate) fn bus_must_exist(app: &App, bus: &str) -> ApiResult<()> {
    if app.site.state.view().buses.contains_key(bus) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "BusNotFound",
            format!(
                "bus `{bus}` does not exist; create it with `PUT /v1/buses/{bus}` or `strait apply` (a `buses:` entry)"
            ),
        ))
    }
}

/// A bus this site has from its own configuration becomes shared with its
/// first shared rule or source.
pub(super) async fn share_bus(app: &App, bus: &str) -> ApiResult<()> {
    if let Some(control) = &app.control {
        let bus_spec = app.site.state.view().buses.get(bus).cloned();
        let shared = control.group.state.view().buses.contains_key(bus);
        if let (false, Some(spec)) = (shared, bus_spec) {
            command_result(
                app.write_config(Command::PutBus {
                    name: bus.to_string(),
                    spec,
                })
                .await?,
            )?;
        }
    }
    Ok(())
}

/// Sites a source may name: this one, the linked ones and those of the
/// control group's members.
pub(super) fn known_sites(app: &App) -> Vec<String> {
    let mut sites: Vec<String> = std::iter::once(app.cfg.site.clone())
        .chain(app.cfg.federation.links.keys().cloned())
        .chain(app.cfg.control.members.iter().map(|m| m.site.clone()))
        .collect();
    sites.sort();
    sites.dedup();
    sites
}
