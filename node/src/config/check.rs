//! The definition error shared by rules, sources and targets, and the
//! name check every named object passes.

/// A definition error: which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Dotted path of the field (`targets[0].endpoint`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Machine-readable code.
    pub code: &'static str,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
            code: "InvalidRule",
        }
    }
}

/// Check a bus, rule or target name.
pub fn validate_name(kind: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError {
            field: kind.into(),
            message: format!(
                "{name:?} is not a valid {kind} name (1-64 characters of A-Z a-z 0-9 . _ -)"
            ),
            code: "InvalidName",
        })
    }
}
