//! The entries of `auth.tokens` as the config file spells them (checked
//! and turned into lookups by [`crate::auth`]).

use serde::{Deserialize, Serialize};

/// One entry of `auth.tokens`.
#[derive(Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TokenSpec {
    /// A token with the `admin` scope.
    Plain(String),
    /// A named token with scopes.
    Scoped(ScopedToken),
}

impl<'de> Deserialize<'de> for TokenSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TokenSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token (string) or {name, token | token_sha256, scopes}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TokenSpec, E> {
                Ok(TokenSpec::Plain(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TokenSpec, A::Error> {
                ScopedToken::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TokenSpec::Scoped)
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSpec::Plain(_) => f.write_str("Plain(<redacted>)"),
            TokenSpec::Scoped(s) => s.fmt(f),
        }
    }
}

/// A named token and what it may do.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    /// Its name, in the audit log.
    pub name: String,
    /// The token itself...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// ... or the SHA-256 of it, 64 hex digits
    /// (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// `admin`, `read`, `events:put:<bus>`, `events:put:*`.
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for ScopedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedToken")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_sha256", &self.token_sha256)
            .field("scopes", &self.scopes)
            .finish()
    }
}
