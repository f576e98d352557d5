//! Target kinds as rules name them: the `bus` target of the node (re-ingest
//! on a bus of the delivering site; its running form is
//! `crate::dispatch::bus_target`) or a kind an adapter registers
//! ([`strait_adapters::TARGET_KINDS`]). [`TargetKind::of`] is the one place
//! a target's `type` is looked up.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The target type name.
pub const KIND: &str = "bus";

/// The kind of a rule target.
#[derive(Clone, Copy)]
pub enum TargetKind {
    /// `bus`: re-ingest at the delivering site.
    Bus,
    /// A kind an adapter builds.
    Adapter(&'static strait_adapters::TargetKind),
}

impl TargetKind {
    /// The kind a target's `type` names, or a `type` error listing the
    /// known ones.
    pub fn of(name: &str) -> Result<TargetKind, strait_adapters::ConfigError> {
        if name == KIND {
            return Ok(TargetKind::Bus);
        }
        strait_adapters::TargetKind::find(name)
            .map(TargetKind::Adapter)
            .map_err(|mut e| {
                e.message = format!("{}; or {KIND:?}", e.message);
                e
            })
    }

    /// Check a target's settings (pure) and return them in normal form.
    pub fn validate(
        self,
        settings: &Map<String, Value>,
    ) -> Result<Map<String, Value>, strait_adapters::ConfigError> {
        match self {
            TargetKind::Bus => {
                let s = BusSettings::from_settings(settings)
                    .map_err(|e| strait_adapters::ConfigError::new(e.field, e.message))?;
                let mut m = Map::new();
                m.insert("bus".into(), Value::String(s.bus));
                Ok(m)
            }
            TargetKind::Adapter(k) => k.validate(settings),
        }
    }
}

/// Settings of a `bus` target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    /// The bus to re-ingest on (at the delivering site).
    pub bus: String,
}

/// A bad `bus` target definition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BusTargetError {
    /// The field (inside the target).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl BusSettings {
    /// Check the settings (pure).
    pub fn from_settings(settings: &Map<String, Value>) -> Result<BusSettings, BusTargetError> {
        let s: BusSettings =
            serde_json::from_value(Value::Object(settings.clone())).map_err(|e| {
                BusTargetError {
                    field: "bus".into(),
                    message: e.to_string(),
                }
            })?;
        crate::config::check::validate_name("bus", &s.bus).map_err(|e| BusTargetError {
            field: "bus".into(),
            message: e.message,
        })?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_are_checked() {
        let ok: Map<String, Value> = json!({"bus": "b"}).as_object().cloned().unwrap_or_default();
        assert_eq!(
            BusSettings::from_settings(&ok).map(|s| s.bus),
            Ok("b".into())
        );
        for bad in [
            json!({}),
            json!({"bus": "no spaces"}),
            json!({"bus": "b", "x": 1}),
        ] {
            let m = bad.as_object().cloned().unwrap_or_default();
            let e = BusSettings::from_settings(&m).expect_err("bad settings");
            assert_eq!(e.field, "bus", "{e}");
        }
    }
}
