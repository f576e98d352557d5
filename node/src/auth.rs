//! Bearer tokens and their scopes (no I/O): which scope a request needs,
//! and which configured token a presented one is. Tokens are kept as
//! SHA-256 digests and compared in constant time.
//!
//! | scope | allows |
//! |---|---|
//! | `admin` | everything |
//! | `read` | `GET`/`HEAD` of `/v1/...`, the `:test` tools, `/metrics` |
//! | `events:put:<bus>` | `POST /v1/buses/<bus>/events` |
//! | `events:put:*` | `POST /v1/buses/<any>/events` |

use http::Method;
use subtle::ConstantTimeEq;

use crate::config::tokens::TokenSpec;

/// A scope a token holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Reads.
    Read,
    /// Ingest into one bus (`Some`) or any bus (`None`, `events:put:*`).
    PutEvents(Option<String>),
}

impl Scope {
    /// Parse `admin`, `read`, `events:put:<bus>`, `events:put:*`.
    pub fn parse(s: &str) -> Result<Scope, String> {
        match s {
            "admin" => Ok(Scope::Admin),
            "read" => Ok(Scope::Read),
            "events:put:*" => Ok(Scope::PutEvents(None)),
            _ => match s.strip_prefix("events:put:") {
                Some(bus) => crate::config::check::validate_name("bus", bus)
                    .map(|()| Scope::PutEvents(Some(bus.to_string())))
                    .map_err(|e| format!("{s:?}: {}", e.message)),
                None => Err(format!(
                    "{s:?} is not a scope (admin, read, events:put:<bus>, events:put:*)"
                )),
            },
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// `read` (or `admin`).
    Read,
    /// `events:put:<bus>`, `events:put:*` (or `admin`).
    PutEvents(String),
    /// `admin`.
    Admin,
}

impl Need {
    /// The scope to name in a 403.
    pub fn scope(&self) -> String {
        match self {
            Need::Read => "read".into(),
            Need::PutEvents(bus) => format!("events:put:{bus}"),
            Need::Admin => "admin".into(),
        }
    }

    /// Whether this request changes configuration (and goes to the audit
    /// log): everything that needs `admin`.
    pub fn is_change(&self) -> bool {
        matches!(self, Need::Admin)
    }
}

/// The scope a `/v1` request needs: reads need `read`; posting events to a
/// bus `events:put:<bus>`; everything else (every change, and any route
/// added later) `admin`.
pub fn need(method: &Method, path: &str) -> Need {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Need::Read;
    }
    if *method == Method::POST {
        if path.starts_with("/v1/") && path.ends_with(":test") && !path[4..].contains('/') {
            return Need::Read;
        }
        let segs: Vec<&str> = path.split('/').collect();
        if let ["", "v1", "buses", bus, "events"] = segs.as_slice()
            && !bus.is_empty()
        {
            return Need::PutEvents((*bus).to_string());
        }
    }
    Need::Admin
}

/// A configured token.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its name (`tokens[<i>]` for a plain string).
    pub name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

impl Token {
    /// Whether it may do what `need` asks.
    pub fn allows(&self, need: &Need) -> bool {
        self.scopes.iter().any(|s| match (s, need) {
            (Scope::Admin, _) => true,
            (Scope::Read, Need::Read) => true,
            (Scope::PutEvents(None), Need::PutEvents(_)) => true,
            (Scope::PutEvents(Some(b)), Need::PutEvents(bus)) => b == bus,
            _ => false,
        })
    }
}

/// A problem with `auth.tokens`, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TokenError {
    /// E.g. `auth.tokens[2].scopes[0]`.
    pub field: String,
    /// Why.
    pub message: String,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Token>);

impl Tokens {
    /// Read `auth.tokens`.
    pub fn from_config(specs: &[TokenSpec]) -> Result<Tokens, TokenError> {
        let mut out = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let at = |f: &str, message: String| TokenError {
                field: format!("auth.tokens[{i}]{f}"),
                message,
            };
            let token = match spec {
                TokenSpec::Plain(t) => {
                    if t.is_empty() {
                        return Err(at("", "an empty token".into()));
                    }
                    Token {
                        name: format!("tokens[{i}]"),
                        digest: sha256(t.as_bytes()),
                        scopes: vec![Scope::Admin],
                    }
                }
                TokenSpec::Scoped(s) => {
                    if s.name.trim().is_empty() {
                        return Err(at(".name", "required".into()));
                    }
                    let digest = match (&s.token, &s.token_sha256) {
                        (Some(t), None) if !t.is_empty() => sha256(t.as_bytes()),
                        (None, Some(h)) => from_hex(h).ok_or_else(|| {
                            at(
                                ".token_sha256",
                                "must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)".into(),
                            )
                        })?,
                        (Some(_), Some(_)) => {
                            return Err(at(
                                "",
                                "give either token or token_sha256, not both".into(),
                            ));
                        }
                        _ => {
                            return Err(at(
                                ".token",
                                "give a non-empty token or token_sha256".into(),
                            ));
                        }
                    };
                    if s.scopes.is_empty() {
                        return Err(at(
                            ".scopes",
                            "give at least one scope (admin, read, events:put:<bus>, events:put:*)"
                                .into(),
                        ));
                    }
                    let scopes = s
                        .scopes
                        .iter()
                        .enumerate()
                        .map(|(j, sc)| {
                            Scope::parse(sc).map_err(|m| at(&format!(".scopes[{j}]"), m))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if out.iter().any(|o: &Token| o.name == s.name) {
                        return Err(at(".name", format!("{:?} is used twice", s.name)));
                    }
                    Token {
                        name: s.name.clone(),
                        digest,
                        scopes,
                    }
                }
            };
            if out.iter().any(|o: &Token| o.digest == token.digest) {
                return Err(at("", "the same token is listed twice".into()));
            }
            out.push(token);
        }
        Ok(Tokens(out))
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The configured token `presented` is, if any. Its digest is compared
    /// with every configured one in constant time, without stopping at a
    /// match.
    pub fn find(&self, presented: &str) -> Option<&Token> {
        let d = sha256(presented.as_bytes());
        let mut found: Option<&Token> = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some(t);
            }
        }
        found
    }
}

/// The tokens in use: read for every request, replaced as a whole when
/// the config file is read again (see [`crate::server::tokens`]), so a
/// request sees either the old set or the new one.
#[derive(Debug, Default)]
pub struct LiveTokens(std::sync::RwLock<std::sync::Arc<Tokens>>);

impl LiveTokens {
    /// Start with `tokens`.
    pub fn new(tokens: Tokens) -> LiveTokens {
        LiveTokens(std::sync::RwLock::new(std::sync::Arc::new(tokens)))
    }

    /// The current set.
    pub fn current(&self) -> std::sync::Arc<Tokens> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Use `tokens` from now on.
    pub fn replace(&self, tokens: Tokens) {
        let new = std::sync::Arc::new(tokens);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tokens::ScopedToken;

    fn scoped(name: &str, token: &str, scopes: &[&str]) -> TokenSpec {
        TokenSpec::Scoped(ScopedToken {
            name: name.into(),
            token: Some(token.into()),
            token_sha256: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn requests_need_the_scope_of_what_they_do() {
        let g = Method::GET;
        let p = Method::POST;
        assert_eq!(need(&g, "/v1/buses/orders/rules"), Need::Read);
        assert_eq!(need(&g, "/v1/buses/orders/events/1"), Need::Read);
        assert_eq!(need(&p, "/v1/patterns:test"), Need::Read);
        assert_eq!(need(&p, "/v1/transforms:test"), Need::Read);
        assert_eq!(
            need(&p, "/v1/buses/orders/events"),
            Need::PutEvents("orders".into())
        );
        assert_eq!(need(&Method::PUT, "/v1/buses/orders"), Need::Admin);
        assert_eq!(need(&Method::DELETE, "/v1/buses/o/rules/r"), Need::Admin);
        assert_eq!(need(&p, "/v1/cluster/members"), Need::Admin);
        // Anything else, including routes added later, needs admin.
        assert_eq!(need(&p, "/v1/buses/orders/archives"), Need::Admin);
        assert_eq!(need(&p, "/v1/buses/orders/events/x"), Need::Admin);
        assert_eq!(need(&p, "/v1/buses//events"), Need::Admin);
        assert_eq!(need(&p, "/v1/buses/a/b:test"), Need::Admin);
    }

    #[test]
    fn tokens_allow_their_scopes_only() {
        let t = Tokens::from_config(&[
            TokenSpec::Plain("root".into()),
            scoped("reader", "r", &["read"]),
            scoped("orders-producer", "p", &["events:put:orders"]),
            scoped("any-producer", "q", &["events:put:*", "read"]),
        ])
        .expect("valid");
        let root = t.find("root").expect("root");
        assert_eq!(root.name, "tokens[0]");
        assert!(root.allows(&Need::Admin));
        let reader = t.find("r").expect("reader");
        assert!(reader.allows(&Need::Read));
        assert!(!reader.allows(&Need::PutEvents("orders".into())));
        assert!(!reader.allows(&Need::Admin));
        let p = t.find("p").expect("producer");
        assert!(p.allows(&Need::PutEvents("orders".into())));
        assert!(!p.allows(&Need::PutEvents("other".into())));
        assert!(!p.allows(&Need::Read));
        let q = t.find("q").expect("any");
        assert!(q.allows(&Need::PutEvents("other".into())));
        assert!(q.allows(&Need::Read));
        assert!(!q.allows(&Need::Admin));
        assert!(t.find("nope").is_none());
        assert!(t.find("").is_none());
    }

    #[test]
    fn a_token_can_be_given_as_its_sha256() {
        // printf %s s3cret | sha256sum
        let h = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";
        assert_eq!(from_hex(h), Some(sha256(b"s3cret")));
        let t = Tokens::from_config(&[TokenSpec::Scoped(ScopedToken {
            name: "ci".into(),
            token: None,
            token_sha256: Some(h.to_uppercase()),
            scopes: vec!["admin".into()],
        })])
        .expect("valid");
        assert_eq!(t.find("s3cret").map(|t| t.name.as_str()), Some("ci"));
    }

    #[test]
    fn bad_entries_name_the_field() {
        let err = |specs: &[TokenSpec]| Tokens::from_config(specs).expect_err("invalid").field;
        assert_eq!(
            err(&[scoped("a", "t", &["write"])]),
            "auth.tokens[0].scopes[0]"
        );
        assert_eq!(
            err(&[
                scoped("a", "t", &["read"]),
                scoped("b", "t2", &["events:put:a b"])
            ]),
            "auth.tokens[1].scopes[0]"
        );
        assert_eq!(err(&[scoped("a", "t", &[])]), "auth.tokens[0].scopes");
        assert_eq!(err(&[scoped("a", "", &["read"])]), "auth.tokens[0].token");
        assert_eq!(err(&[scoped("", "t", &["read"])]), "auth.tokens[0].name");
        assert_eq!(
            err(&[scoped("a", "t", &["read"]), scoped("a", "u", &["read"])]),
            "auth.tokens[1].name"
        );
        assert_eq!(
            err(&[TokenSpec::Plain("t".into()), scoped("a", "t", &["read"])]),
            "auth.tokens[1]"
        );
        let bad_hash = TokenSpec::Scoped(ScopedToken {
            name: "a".into(),
            token: None,
            token_sha256: Some("abc".into()),
            scopes: vec!["read".into()],
        });
        assert_eq!(err(&[bad_hash]), "auth.tokens[0].token_sha256");
    }

    #[test]
    fn the_hardened_example_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/config/node-hardened.yaml");
        let cfg = crate::config::NodeConfig::load(&path).expect("parses");
        cfg.validate().expect("valid");
        let t = Tokens::from_config(&cfg.auth.tokens).expect("tokens");
        let p = t
            .find("replace-with-the-orders-producer-token")
            .expect("the documented placeholder");
        assert!(p.allows(&Need::PutEvents("orders".into())) && !p.allows(&Need::Read));
        assert!(!cfg.auth.metrics_public && cfg.http_tls.is_some());
    }

    #[test]
    fn plain_and_scoped_entries_parse_from_yaml() {
        let a: crate::config::Auth = serde_yaml::from_str(
            "tokens:\n  - plain\n  - {name: p, token: x, scopes: ['events:put:orders']}\nmetrics_public: false\n",
        )
        .expect("yaml");
        assert_eq!(a.tokens.len(), 2);
        assert!(!a.metrics_public);
        assert_eq!(a.join_token(), Some("plain"));
        assert!(Tokens::from_config(&a.tokens).is_ok());
        let e = serde_yaml::from_str::<crate::config::Auth>(
            "tokens:\n  - {name: p, tokne: x, scopes: [read]}\n",
        );
        assert!(e.is_err());
    }
}
