//! The stored form of a bus.

use crate::util::now_ms;

/// The stored form of a bus (`createdAt` now unless given).
pub fn bus_json(name: &str, description: &str, created_at: Option<&str>) -> serde_json::Value {
    let created = created_at.map(str::to_string).unwrap_or_else(|| {
        chrono::DateTime::from_timestamp_millis(now_ms() as i64)
            .unwrap_or_default()
            .to_rfc3339()
    });
    serde_json::json!({"name": name, "description": description, "createdAt": created})
}
