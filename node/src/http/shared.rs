//! Checks and writes that several resources share.

use axum::http::StatusCode;
use strait_federation::{Command, SiteState};

use crate::config::check::validate_name;
use crate::http::Resources;
use crate::http::error::{ApiError, ApiResult, command_result};

pub(super) fn check_name(kind: &str, name: &str) -> ApiResult<()> {
    validate_name(kind, name).map_err(|e| ApiError::bad_request(e.code, e.message))
}

pub(super) fn bus_must_exist(state: &SiteState, bus: &str) -> ApiResult<()> {
    if state.view().buses.contains_key(bus) {
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
pub(super) async fn share_bus(res: &Resources, bus: &str) -> ApiResult<()> {
    if let Some(shared_state) = res.config.shared() {
        let bus_spec = res.state.view().buses.get(bus).cloned();
        let shared = shared_state.view().buses.contains_key(bus);
        if let (false, Some(spec)) = (shared, bus_spec) {
            command_result(
                res.config
                    .write(Command::PutBus {
                        name: bus.to_string(),
                        spec,
                    })
                    .await?,
            )?;
        }
    }
    Ok(())
}
