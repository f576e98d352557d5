//! AWS Signature Version 4 verification (header form, `AWS4-HMAC-SHA256`)
//! for the node's AWS-compatible PutEvents ingress. Pure: the caller gives
//! the request as received, the accepted keys and the clock.
//!
//! Checked: the `Authorization` header's shape, that the access key is one
//! of the configured keys, that `host` and the date header are signed, the
//! credential scope (date matches the request date, service, terminator),
//! the request date within `max_skew_secs` of the clock, and the signature
//! over the canonical request (method, normalized URI, sorted query, signed
//! headers, SHA-256 of the body), compared in constant time.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Date format of `x-amz-date`.
const AMZ_DATE: &str = "%Y%m%dT%H%M%SZ";

/// A key pair the ingress accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path as sent (percent-encoded).
    pub path: &'a str,
    /// Query string as sent, without `?`.
    pub query: &'a str,
    /// Headers in arrival order; names in any case, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: &'a [u8],
}

/// A verified request's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key that signed.
    pub access_key_id: String,
    /// Region of the credential scope.
    pub region: String,
    /// Service of the credential scope.
    pub service: String,
}

/// Why verification failed: AWS's error code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AuthError {
    /// `MissingAuthenticationTokenException`, `IncompleteSignatureException`,
    /// `UnrecognizedClientException` or `InvalidSignatureException`.
    pub code: &'static str,
    /// AWS's wording.
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> AuthError {
    AuthError {
        code,
        message: message.into(),
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The SigV4 signing key for a date (`YYYYMMDD`), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// URI-encode as SigV4 does (everything but `A-Za-z0-9-_.~`).
pub fn uri_encode(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (
                (b[i + 1] as char).to_digit(16),
                (b[i + 2] as char).to_digit(16),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The canonical URI: dot segments and empty segments removed (a trailing
/// slash kept), each segment decoded and encoded once.
pub fn canonical_uri(path: &str) -> String {
    let mut segs: Vec<Vec<u8>> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(percent_decode(s)),
        }
    }
    let trailing =
        path.len() > 1 && (path.ends_with('/') || path.ends_with("/.") || path.ends_with("/.."));
    let mut out = String::from("/");
    out.push_str(
        &segs
            .iter()
            .map(|s| uri_encode(s))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if trailing && !segs.is_empty() {
        out.push('/');
    }
    out
}

/// The canonical query string: parameters decoded, encoded, sorted by name
/// then value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn trim_all(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Header name (lower case) → canonical value (values of repeated headers
/// joined with `,`, whitespace trimmed and collapsed).
fn header_values(headers: &[(String, Vec<u8>)]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in headers {
        let v = trim_all(v);
        out.entry(k.to_ascii_lowercase())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// The canonical request for the given signed headers (lower case, sorted).
pub fn canonical_request(req: &Request<'_>, signed: &[&str], payload_hash: &str) -> String {
    let values = header_values(&req.headers);
    let mut canonical_headers = String::new();
    for h in signed {
        canonical_headers.push_str(h);
        canonical_headers.push(':');
        canonical_headers.push_str(values.get(*h).map(String::as_str).unwrap_or(""));
        canonical_headers.push('\n');
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        canonical_headers,
        signed.join(";"),
        payload_hash
    )
}

/// The string to sign.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Sign: the hex signature of a request at `amz_date` for the scope
/// `date/region/service/aws4_request` with the given signed headers.
pub fn signature(
    req: &Request<'_>,
    signed: &[&str],
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
) -> String {
    let date = amz_date.get(..8).unwrap_or("");
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let cr = canonical_request(req, signed, &sha256_hex(req.body));
    let sts = string_to_sign(amz_date, &scope, &cr);
    hex::encode(hmac(
        &signing_key(secret, date, region, service),
        sts.as_bytes(),
    ))
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Access key id.
    pub access_key_id: String,
    /// Scope date `YYYYMMDD`.
    pub date: String,
    /// Scope region.
    pub region: String,
    /// Scope service.
    pub service: String,
    /// Signed header names as given.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

/// Parse `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let incomplete = |m: &str| err("IncompleteSignatureException", m.to_string());
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            incomplete(&format!(
                "Authorization header requires the {ALGORITHM} algorithm"
            ))
        })?;
    let mut credential = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            return Err(incomplete(&format!(
                "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters; got {:?}",
                part.trim()
            )));
        };
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => sig = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed), Some(sig)) = (credential, signed, sig) else {
        return Err(incomplete(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters",
        ));
    };
    let parts: Vec<&str> = credential.split('/').collect();
    if parts.len() != 5 || parts[4] != "aws4_request" || parts.iter().any(|p| p.is_empty()) {
        return Err(incomplete(&format!(
            "Credential {credential:?} must have the form <access key>/<date>/<region>/<service>/aws4_request"
        )));
    }
    if sig.len() != 64 || !sig.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(incomplete("Signature must be 64 hex characters"));
    }
    Ok(Authorization {
        access_key_id: parts[0].to_string(),
        date: parts[1].to_string(),
        region: parts[2].to_string(),
        service: parts[3].to_string(),
        signed_headers: signed.split(';').map(str::to_string).collect(),
        signature: sig.to_ascii_lowercase(),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's date from `x-amz-date` (or an RFC 1123 `Date`), as
/// `YYYYMMDDTHHMMSSZ` and as a time.
fn request_date(
    values: &BTreeMap<String, String>,
) -> Result<(String, DateTime<Utc>, &'static str), AuthError> {
    if let Some(d) = values.get("x-amz-date") {
        let t = NaiveDateTime::parse_from_str(d, AMZ_DATE)
            .map_err(|_| {
                err(
                    "IncompleteSignatureException",
                    format!("X-Amz-Date {d:?} is not in the format YYYYMMDD'T'HHMMSS'Z'"),
                )
            })?
            .and_utc();
        return Ok((d.clone(), t, "x-amz-date"));
    }
    if let Some(d) = values.get("date") {
        let t = DateTime::parse_from_rfc2822(d)
            .map_err(|_| {
                err(
                    "IncompleteSignatureException",
                    format!("Date {d:?} is not an RFC 1123 date"),
                )
            })?
            .with_timezone(&Utc);
        return Ok((t.format(AMZ_DATE).to_string(), t, "date"));
    }
    Err(err(
        "IncompleteSignatureException",
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
    ))
}

/// Verify a SigV4-signed request for `service` against `keys` at `now`,
/// allowing `max_skew_secs` between the request date and the clock.
pub fn verify(
    req: &Request<'_>,
    keys: &[VerifyKey],
    service: &str,
    now: DateTime<Utc>,
    max_skew_secs: i64,
) -> Result<Verified, AuthError> {
    let values = header_values(&req.headers);
    let Some(auth) = values.get("authorization") else {
        return Err(err(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let auth = parse_authorization(auth)?;
    let Some(key) = keys.iter().find(|k| k.access_key_id == auth.access_key_id) else {
        return Err(err(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    let signed: Vec<String> = auth
        .signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let sorted = {
        let mut s = signed.clone();
        s.sort();
        s.dedup();
        s
    };
    if sorted != signed {
        return Err(err(
            "IncompleteSignatureException",
            "SignedHeaders must be lower case, sorted and without duplicates",
        ));
    }
    if !signed.iter().any(|h| h == "host") {
        return Err(err(
            "InvalidSignatureException",
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let (amz_date, t, date_header) = request_date(&values)?;
    if !signed.iter().any(|h| h == date_header) {
        return Err(err(
            "InvalidSignatureException",
            format!("'{date_header}' must be a 'SignedHeader' in the AWS Authorization."),
        ));
    }
    if auth.date != amz_date[..8] {
        return Err(err(
            "InvalidSignatureException",
            format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
                auth.date,
                &amz_date[..8]
            ),
        ));
    }
    if auth.service != service {
        return Err(err(
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{service}'. "),
        ));
    }
    let skew = chrono::Duration::seconds(max_skew_secs);
    let fmt = |t: DateTime<Utc>| t.format(AMZ_DATE).to_string();
    if t < now - skew {
        return Err(err(
            "InvalidSignatureException",
            format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - {} min.)",
                fmt(now - skew),
                fmt(now),
                max_skew_secs / 60
            ),
        ));
    }
    if t > now + skew {
        return Err(err(
            "InvalidSignatureException",
            format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + {} min.)",
                fmt(now + skew),
                fmt(now),
                max_skew_secs / 60
            ),
        ));
    }
    let refs: Vec<&str> = signed.iter().map(String::as_str).collect();
    let expected = signature(
        req,
        &refs,
        &key.secret_access_key,
        &amz_date,
        &auth.region,
        &auth.service,
    );
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(err(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(Verified {
        access_key_id: auth.access_key_id,
        region: auth.region,
        service: auth.service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn req<'a>(method: &'a str, path: &'a str, query: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            method,
            path,
            query,
            headers: vec![
                ("Host".into(), b"example.amazonaws.com".to_vec()),
                ("X-Amz-Date".into(), DATE.as_bytes().to_vec()),
            ],
            body,
        }
    }

    fn sig(r: &Request<'_>) -> String {
        signature(
            r,
            &["host", "x-amz-date"],
            SECRET,
            DATE,
            "us-east-1",
            "service",
        )
    }

    /// Vectors of AWS's published SigV4 test suite (credential
    /// AKIDEXAMPLE, 20150830T123600Z, us-east-1, service `service`).
    #[test]
    fn aws_test_suite() {
        // get-vanilla
        assert_eq!(
            sig(&req("GET", "/", "", b"")),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        // get-vanilla-query-order-key-case
        assert_eq!(
            sig(&req("GET", "/", "Param2=value2&Param1=value1", b"")),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
        // get-utf8
        assert_eq!(
            sig(&req("GET", "/%E1%88%B4", "", b"")),
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"
        );
        // normalization cases of the suite: all sign like get-vanilla
        for p in ["//", "/./", "/example/..", "/example1/example2/../.."] {
            assert_eq!(canonical_uri(p), "/", "{p}");
        }
        assert_eq!(canonical_uri("//example//"), "/example/");
        assert_eq!(canonical_uri("/./example"), "/example");
        assert_eq!(canonical_uri("/example%20space/"), "/example%20space/");
        assert_eq!(canonical_query("b=2&a=1&A=0&c"), "A=0&a=1&b=2&c=");
    }

    fn signed_request<'a>(
        body: &'a [u8],
        secret: &str,
        akid: &str,
        date: &str,
        headers: &mut Vec<(String, Vec<u8>)>,
    ) -> Request<'a> {
        let mut r = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: vec![
                ("host".into(), b"localhost:8080".to_vec()),
                ("x-amz-date".into(), date.as_bytes().to_vec()),
                (
                    "content-type".into(),
                    b"application/x-amz-json-1.1".to_vec(),
                ),
                ("x-amz-target".into(), b"AWSEvents.PutEvents".to_vec()),
            ],
            body,
        };
        let signed = ["content-type", "host", "x-amz-date", "x-amz-target"];
        let s = signature(&r, &signed, secret, date, "us-east-1", "events");
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={akid}/{}/us-east-1/events/aws4_request, SignedHeaders={}, Signature={s}",
            &date[..8],
            signed.join(";")
        );
        r.headers.push(("authorization".into(), auth.into_bytes()));
        r.headers.append(headers);
        r
    }

    #[test]
    fn verify_accepts_and_rejects() {
        let keys = [VerifyKey {
            access_key_id: "AKIDSTRAIT".into(),
            secret_access_key: "s3cret".into(),
        }];
        let now = NaiveDateTime::parse_from_str(DATE, AMZ_DATE)
            .expect("date")
            .and_utc();
        let body = br#"{"Entries":[]}"#;
        let ok = signed_request(body, "s3cret", "AKIDSTRAIT", DATE, &mut vec![]);
        let v = verify(&ok, &keys, "events", now, 300).expect("valid");
        assert_eq!(v.region, "us-east-1");
        assert_eq!(v.access_key_id, "AKIDSTRAIT");
        // wrong secret
        let bad = signed_request(body, "wrong", "AKIDSTRAIT", DATE, &mut vec![]);
        assert_eq!(
            verify(&bad, &keys, "events", now, 300)
                .expect_err("secret")
                .code,
            "InvalidSignatureException"
        );
        // body changed after signing
        let mut tampered = ok.clone();
        tampered.body = br#"{"Entries":[{}]}"#;
        assert_eq!(
            verify(&tampered, &keys, "events", now, 300)
                .expect_err("body")
                .code,
            "InvalidSignatureException"
        );
        // unknown key
        let unknown = signed_request(body, "s3cret", "AKIDOTHER", DATE, &mut vec![]);
        assert_eq!(
            verify(&unknown, &keys, "events", now, 300)
                .expect_err("key")
                .code,
            "UnrecognizedClientException"
        );
        // stale and future dates
        let later = now + chrono::Duration::seconds(301);
        let e = verify(&ok, &keys, "events", later, 300).expect_err("stale");
        assert_eq!(e.code, "InvalidSignatureException");
        assert!(e.message.starts_with("Signature expired"), "{e}");
        let earlier = now - chrono::Duration::seconds(301);
        let e = verify(&ok, &keys, "events", earlier, 300).expect_err("future");
        assert!(e.message.contains("not yet current"), "{e}");
        // wrong service in scope
        assert_eq!(
            verify(&ok, &keys, "sqs", now, 300)
                .expect_err("service")
                .code,
            "InvalidSignatureException"
        );
        // missing / malformed Authorization
        let mut none = ok.clone();
        none.headers.retain(|(k, _)| k != "authorization");
        assert_eq!(
            verify(&none, &keys, "events", now, 300)
                .expect_err("none")
                .code,
            "MissingAuthenticationTokenException"
        );
        let mut junk = none.clone();
        junk.headers.push((
            "Authorization".into(),
            b"AWS4-HMAC-SHA256 Credential=x".to_vec(),
        ));
        assert_eq!(
            verify(&junk, &keys, "events", now, 300)
                .expect_err("junk")
                .code,
            "IncompleteSignatureException"
        );
        // an unsigned header may be added; a signed one may not change
        let extra = signed_request(
            body,
            "s3cret",
            "AKIDSTRAIT",
            DATE,
            &mut vec![("user-agent".into(), b"x".to_vec())],
        );
        assert!(verify(&extra, &keys, "events", now, 300).is_ok());
        let mut changed = ok.clone();
        for (k, v) in changed.headers.iter_mut() {
            if k == "x-amz-target" {
                *v = b"AWSEvents.PutRule".to_vec();
            }
        }
        assert!(verify(&changed, &keys, "events", now, 300).is_err());
    }

    #[test]
    fn authorization_parsing() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        )
        .expect("ok");
        assert_eq!(a.access_key_id, "AKIDEXAMPLE");
        assert_eq!(a.signed_headers, vec!["host", "x-amz-date"]);
        for bad in [
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/aws4_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request",
        ] {
            assert_eq!(
                parse_authorization(bad).expect_err(bad).code,
                "IncompleteSignatureException"
            );
        }
    }
}
