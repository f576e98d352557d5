//! Alibaba Cloud EventBridge request signing, pure functions.
//!
//! Two schemes live here:
//!
//! * **Data-plane API signature** (what the official `alibabacloud-eventbridge`
//!   SDKs send with `PutEvents`): `Authorization: acs:<AccessKeyId>:<Signature>`
//!   where `Signature = Base64(HMAC-SHA1(AccessKeySecret, StringToSign))` and
//!
//!   ```text
//!   StringToSign = METHOD "\n" Content-MD5 "\n" Content-Type "\n" Date "\n"
//!                  CanonicalizedHeaders CanonicalizedResource
//!   ```
//!
//!   `CanonicalizedHeaders` is every header whose (lower-case) name starts
//!   with `x-acs`, sorted by name, each as `name:value\n`;
//!   `CanonicalizedResource` is the path, then `?` and the query parameters
//!   sorted by name as `k=v` joined by `&` when there is a query. Used both by
//!   the target (signing) and by the ingress (verifying).
//!
//! * **HTTP push signature** (what Alibaba EventBridge adds when it pushes to
//!   an HTTP target): `x-eventbridge-signature = Base64(HMAC-SHA1(secret,
//!   StringToSign))` where `secret` is recovered from
//!   `x-eventbridge-signature-secret` with Alibaba's RSA public key and
//!
//!   ```text
//!   StringToSign = URL "\n"
//!                  "x-eventbridge-signature-timestamp: " ts "\n"
//!                  "x-eventbridge-signature-method: " method "\n"
//!                  "x-eventbridge-signature-version: " version "\n"
//!                  "x-eventbridge-signature-url: " cert-url "\n"
//!                  ["x-eventbridge-signature-token: " token "\n"]
//!                  body "\n"
//!   ```

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use md5::Digest;
use num_bigint::BigUint;
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// The parts of a request that the data-plane signature covers. Header
/// names must be lower case (HTTP header names are case-insensitive; the SDK
/// writes them in lower case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedRequest {
    /// HTTP method, upper case (`POST`).
    pub method: String,
    /// Path (`/openapi/putEvents`).
    pub pathname: String,
    /// Headers by lower-case name.
    pub headers: BTreeMap<String, String>,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
}

/// The string to sign of a data-plane request, exactly as the official SDK
/// builds it.
pub fn string_to_sign(req: &SignedRequest) -> String {
    let h = |name: &str| req.headers.get(name).map(String::as_str).unwrap_or("");
    let mut s = format!(
        "{}\n{}\n{}\n{}\n",
        req.method,
        h("content-md5"),
        h("content-type"),
        h("date")
    );
    for (name, value) in &req.headers {
        if name.starts_with("x-acs") {
            s.push_str(name);
            s.push(':');
            s.push_str(value);
            s.push('\n');
        }
    }
    s.push_str(&req.pathname);
    if !req.query.is_empty() {
        s.push('?');
        let parts: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&parts.join("&"));
    }
    s
}

fn hmac_sha1(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    match HmacSha1::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// `Base64(HMAC-SHA1(secret, string_to_sign))`.
pub fn signature(string_to_sign: &str, secret: &str) -> String {
    B64.encode(hmac_sha1(secret.as_bytes(), string_to_sign.as_bytes()))
}

/// The `Authorization` header value: `acs:<id>:<signature>`.
pub fn authorization(access_key_id: &str, signature: &str) -> String {
    format!("acs:{access_key_id}:{signature}")
}

/// Split an `Authorization` header into (AccessKeyId, signature).
pub fn parse_authorization(value: &str) -> Option<(&str, &str)> {
    let rest = value.trim().strip_prefix("acs:")?;
    let (id, sig) = rest.rsplit_once(':')?;
    if id.is_empty() || sig.is_empty() {
        return None;
    }
    Some((id, sig))
}

/// Constant-time comparison of two byte strings.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Base64(MD5(body))`, the `Content-MD5` header value.
pub fn content_md5(body: &[u8]) -> String {
    B64.encode(md5::Md5::digest(body))
}

/// An AccessKey pair that may sign ingress requests.
#[derive(Clone, PartialEq, Eq)]
pub struct IngressKey {
    /// AccessKey ID.
    pub access_key_id: String,
    /// AccessKey secret.
    pub access_key_secret: String,
    /// If set, the request must carry this `x-acs-security-token` (STS).
    pub security_token: Option<String>,
}

impl std::fmt::Debug for IngressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressKey")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .finish()
    }
}

/// Why an ingress request is not authenticated: Alibaba's error code, its
/// HTTP status and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AuthError {
    /// HTTP status.
    pub status: u16,
    /// Alibaba error code (`SignatureDoesNotMatch`, `InvalidAccessKeyId`, ...).
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl AuthError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        AuthError {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Verify a data-plane request signed as the SDK signs. `now_secs` is Unix
/// time; the `Date` header must be within `max_skew_secs` of it. Checks, in
/// order: the `Authorization` form, the signature method and version when
/// given, the `Date`, the AccessKey ID, the STS token when the key has one,
/// and the signature (constant time). Does not read the body: the body is
/// only covered through `Content-MD5`, see [`check_content_md5`].
pub fn verify_request<'k>(
    req: &SignedRequest,
    keys: &'k [IngressKey],
    now_secs: i64,
    max_skew_secs: u64,
) -> Result<&'k IngressKey, AuthError> {
    let auth = req.headers.get("authorization").ok_or_else(|| {
        AuthError::new(
            400,
            "MissingAuthorization",
            "the Authorization header is missing (expected `acs:<AccessKeyId>:<Signature>`)",
        )
    })?;
    let (id, sig) = parse_authorization(auth).ok_or_else(|| {
        AuthError::new(
            400,
            "InvalidAuthorization",
            "the Authorization header is not of the form `acs:<AccessKeyId>:<Signature>`",
        )
    })?;
    if let Some(m) = req.headers.get("x-acs-signature-method")
        && m != "HMAC-SHA1"
    {
        return Err(AuthError::new(
            400,
            "InvalidSignatureMethod",
            format!("x-acs-signature-method {m:?} is not supported (use HMAC-SHA1)"),
        ));
    }
    if let Some(v) = req.headers.get("x-acs-signature-version")
        && v != "1.0"
    {
        return Err(AuthError::new(
            400,
            "InvalidSignatureVersion",
            format!("x-acs-signature-version {v:?} is not supported (use 1.0)"),
        ));
    }
    let date = req
        .headers
        .get("date")
        .ok_or_else(|| AuthError::new(400, "MissingDate", "the Date header is missing"))?;
    let when = chrono::DateTime::parse_from_rfc2822(date.trim()).map_err(|_| {
        AuthError::new(
            400,
            "InvalidDate",
            format!("the Date header {date:?} is not an RFC 1123 date like `Thu, 06 Feb 2020 07:32:54 GMT`"),
        )
    })?;
    let skew = now_secs.saturating_sub(when.timestamp()).unsigned_abs();
    if skew > max_skew_secs {
        return Err(AuthError::new(
            403,
            "RequestTimeTooSkewed",
            format!(
                "the Date header is {skew} s away from the server time, more than the allowed {max_skew_secs} s"
            ),
        ));
    }
    let key = keys
        .iter()
        .find(|k| constant_time_eq(k.access_key_id.as_bytes(), id.as_bytes()))
        .ok_or_else(|| {
            AuthError::new(
                403,
                "InvalidAccessKeyId",
                "The access Id you provided is not exist.",
            )
        })?;
    if let Some(token) = &key.security_token {
        let sent = req
            .headers
            .get("x-acs-security-token")
            .map(String::as_str)
            .unwrap_or("");
        if !constant_time_eq(sent.as_bytes(), token.as_bytes()) {
            return Err(AuthError::new(
                403,
                "SecurityTokenInvalid",
                "The Security token that your provide is invalid.",
            ));
        }
    }
    let expected = signature(&string_to_sign(req), &key.access_key_secret);
    if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
        return Err(AuthError::new(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ));
    }
    Ok(key)
}

/// When the signed request carries `Content-MD5`, the body must match it.
pub fn check_content_md5(req: &SignedRequest, body: &[u8]) -> Result<(), AuthError> {
    match req.headers.get("content-md5") {
        None => Ok(()),
        Some(v) if v.trim() == content_md5(body) => Ok(()),
        Some(_) => Err(AuthError::new(
            400,
            "InvalidContentMD5",
            "the Content-MD5 header does not match the body",
        )),
    }
}

// ---------------------------------------------------------------------------
// HTTP push signature
// ---------------------------------------------------------------------------

/// Names of the push signature headers, in string-to-sign order.
pub const PUSH_SIGNED_HEADERS: [&str; 5] = [
    "x-eventbridge-signature-timestamp",
    "x-eventbridge-signature-method",
    "x-eventbridge-signature-version",
    "x-eventbridge-signature-url",
    "x-eventbridge-signature-token",
];

/// The push string to sign. `headers` holds the push headers by lower-case
/// name; the token line is present only when the token header is.
pub fn push_string_to_sign(url: &str, headers: &BTreeMap<String, String>, body: &[u8]) -> String {
    let mut s = String::with_capacity(url.len() + body.len() + 256);
    s.push_str(url);
    s.push('\n');
    for name in PUSH_SIGNED_HEADERS {
        let value = headers.get(name);
        if name == "x-eventbridge-signature-token" && value.is_none() {
            continue;
        }
        s.push_str(name);
        s.push_str(": ");
        s.push_str(value.map(String::as_str).unwrap_or(""));
        s.push('\n');
    }
    s.push_str(&String::from_utf8_lossy(body));
    s.push('\n');
    s
}

/// An RSA public key (modulus and exponent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    n: BigUint,
    e: BigUint,
    size: usize,
}

impl RsaPublicKey {
    /// Parse a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `CERTIFICATE`.
    pub fn from_pem(pem: &str) -> Result<RsaPublicKey, String> {
        use x509_parser::prelude::FromDer;
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| format!("not PEM: {e}"))?;
        let spki = match pem.label.as_str() {
            "CERTIFICATE" => {
                let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&pem.contents)
                    .map_err(|e| format!("not an X.509 certificate: {e}"))?;
                cert.tbs_certificate.subject_pki.clone()
            }
            "PUBLIC KEY" => {
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents)
                    .map_err(|e| format!("not a public key: {e}"))?;
                spki
            }
            other => {
                return Err(format!(
                    "PEM label {other:?} (expected PUBLIC KEY or CERTIFICATE)"
                ));
            }
        };
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let n = BigUint::from_bytes_be(rsa.modulus);
                let e = BigUint::from_bytes_be(rsa.exponent);
                let size = n.bits().div_ceil(8) as usize;
                if size < 128 {
                    return Err("RSA key is shorter than 1024 bits".into());
                }
                Ok(RsaPublicKey { n, e, size })
            }
            Ok(_) => Err("not an RSA key".into()),
            Err(e) => Err(format!("cannot parse the key: {e}")),
        }
    }

    /// RSA "public decrypt": `m = c^e mod n`, then strip PKCS#1 v1.5 block
    /// type 1 padding (`00 01 FF.. 00 data`). `None` when the input does not
    /// decrypt to a well-formed block.
    pub fn public_decrypt(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        if ciphertext.len() != self.size {
            return None;
        }
        let c = BigUint::from_bytes_be(ciphertext);
        if c >= self.n {
            return None;
        }
        let m = c.modpow(&self.e, &self.n).to_bytes_be();
        // to_bytes_be drops leading zeros: the block is 00 01 FF.. 00 data.
        if m.len() != self.size - 1 || m.first() != Some(&1) {
            return None;
        }
        let sep = m.iter().skip(1).position(|b| *b != 0xff)? + 1;
        if sep < 9 || m.get(sep) != Some(&0) {
            return None;
        }
        Some(m[sep + 1..].to_vec())
    }
}

/// Why a push request is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// A signature header is missing or malformed.
    #[error("{0}")]
    Malformed(String),
    /// The timestamp is outside the allowed window.
    #[error("{0}")]
    Expired(String),
    /// The certificate URL is not one this node trusts.
    #[error("{0}")]
    UntrustedKey(String),
    /// The signature does not verify.
    #[error("{0}")]
    BadSignature(String),
}

/// Verify a push request. `url` is the URL Alibaba called (as configured on
/// its HTTP target); `keys` maps trusted certificate URLs to their keys;
/// `now_ms` is Unix time in milliseconds. The timestamp may be in seconds or
/// milliseconds (values above 10^11 are milliseconds).
pub fn verify_push(
    url: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    keys: &BTreeMap<String, RsaPublicKey>,
    now_ms: i64,
    max_age_secs: u64,
) -> Result<(), PushError> {
    let get = |name: &str| {
        headers
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| PushError::Malformed(format!("the {name} header is missing")))
    };
    let ts_text = get("x-eventbridge-signature-timestamp")?;
    let ts: i64 = ts_text.trim().parse().map_err(|_| {
        PushError::Malformed(format!(
            "x-eventbridge-signature-timestamp {ts_text:?} is not a Unix timestamp"
        ))
    })?;
    let ts_ms = if ts.unsigned_abs() > 100_000_000_000 {
        ts
    } else {
        ts.saturating_mul(1000)
    };
    let age = now_ms.saturating_sub(ts_ms).unsigned_abs();
    if age > max_age_secs.saturating_mul(1000) {
        return Err(PushError::Expired(format!(
            "x-eventbridge-signature-timestamp is {} s away from the server time, more than the allowed {max_age_secs} s (replay protection)",
            age / 1000
        )));
    }
    let method = get("x-eventbridge-signature-method")?;
    if method != "HMAC-SHA1" {
        return Err(PushError::Malformed(format!(
            "x-eventbridge-signature-method {method:?} is not supported (HMAC-SHA1)"
        )));
    }
    let cert_url = get("x-eventbridge-signature-url")?;
    let key = keys.get(cert_url).ok_or_else(|| {
        PushError::UntrustedKey(format!(
            "x-eventbridge-signature-url {cert_url:?} is not a configured public key (alibaba.push.public_keys)"
        ))
    })?;
    let secret_b64 = get("x-eventbridge-signature-secret")?;
    let encrypted = B64
        .decode(secret_b64.trim())
        .map_err(|_| PushError::Malformed("x-eventbridge-signature-secret is not base64".into()))?;
    let secret = key.public_decrypt(&encrypted).ok_or_else(|| {
        PushError::BadSignature(
            "x-eventbridge-signature-secret does not decrypt with the configured public key".into(),
        )
    })?;
    let sig = get("x-eventbridge-signature")?;
    let sts = push_string_to_sign(url, headers, body);
    let expected = B64.encode(hmac_sha1(&secret, sts.as_bytes()));
    if !constant_time_eq(expected.as_bytes(), sig.trim().as_bytes()) {
        return Err(PushError::BadSignature(
            "x-eventbridge-signature does not match the request".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sdk_request() -> SignedRequest {
        let mut headers = BTreeMap::new();
        for (k, v) in [
            ("date", "Thu, 06 Feb 2020 07:32:54 GMT"),
            ("host", "123.eventbridge.cn-hangzhou.aliyuncs.com"),
            ("accept", "application/json"),
            ("x-acs-signature-nonce", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
            ("x-acs-signature-method", "HMAC-SHA1"),
            ("x-acs-signature-version", "1.0"),
            ("x-eventbridge-version", "2015-06-06"),
            (
                "content-type",
                "application/cloudevents-batch+json; charset=utf-8",
            ),
        ] {
            headers.insert(k.to_string(), v.to_string());
        }
        SignedRequest {
            method: "POST".into(),
            pathname: "/openapi/putEvents".into(),
            headers,
            query: BTreeMap::new(),
        }
    }

    #[test]
    fn string_to_sign_of_known_request() {
        assert_eq!(
            string_to_sign(&sdk_request()),
            "POST\n\napplication/cloudevents-batch+json; charset=utf-8\nThu, 06 Feb 2020 07:32:54 GMT\n\
             x-acs-signature-method:HMAC-SHA1\nx-acs-signature-nonce:0a1b2c3d4e5f60718293a4b5c6d7e8f9\n\
             x-acs-signature-version:1.0\n/openapi/putEvents"
        );
        let mut r = sdk_request();
        r.query.insert("b".into(), "2".into());
        r.query.insert("a".into(), "1".into());
        assert!(string_to_sign(&r).ends_with("/openapi/putEvents?a=1&b=2"));
    }

    /// Golden values computed once with the installed SDK:
    /// `alibabacloud_eventbridge_util.client.Client.get_signature(
    ///     Client.get_string_to_sign(req), "testsecret")` for the request above.
    #[test]
    fn signature_matches_sdk_golden_value() {
        let sts = string_to_sign(&sdk_request());
        assert_eq!(signature(&sts, "testsecret"), GOLDEN_SIGNATURE);
        assert_eq!(
            authorization("testid", GOLDEN_SIGNATURE),
            format!("acs:testid:{GOLDEN_SIGNATURE}")
        );
    }

    const GOLDEN_SIGNATURE: &str = "aRqNIzUci/uq3vKqpcWuQW1g0Ng=";

    fn keys() -> Vec<IngressKey> {
        vec![IngressKey {
            access_key_id: "testid".into(),
            access_key_secret: "testsecret".into(),
            security_token: None,
        }]
    }

    fn now_of_request() -> i64 {
        chrono::DateTime::parse_from_rfc2822("Thu, 06 Feb 2020 07:32:54 GMT")
            .expect("date")
            .timestamp()
    }

    #[test]
    fn verifies_and_rejects() {
        let mut r = sdk_request();
        let sig = signature(&string_to_sign(&r), "testsecret");
        r.headers
            .insert("authorization".into(), authorization("testid", &sig));
        let k = keys();
        assert!(verify_request(&r, &k, now_of_request() + 10, 900).is_ok());
        assert_eq!(
            verify_request(&r, &k, now_of_request() + 1000, 900)
                .expect_err("skew")
                .code,
            "RequestTimeTooSkewed"
        );
        let mut bad = r.clone();
        bad.headers
            .insert("authorization".into(), authorization("testid", "AAAA"));
        assert_eq!(
            verify_request(&bad, &k, now_of_request(), 900)
                .expect_err("sig")
                .code,
            "SignatureDoesNotMatch"
        );
        let mut bad = r.clone();
        bad.headers
            .insert("authorization".into(), authorization("other", &sig));
        assert_eq!(
            verify_request(&bad, &k, now_of_request(), 900)
                .expect_err("key")
                .code,
            "InvalidAccessKeyId"
        );
        let mut tampered = r.clone();
        tampered
            .headers
            .insert("x-acs-signature-nonce".into(), "replayed".into());
        assert_eq!(
            verify_request(&tampered, &k, now_of_request(), 900)
                .expect_err("header changed")
                .code,
            "SignatureDoesNotMatch"
        );
    }

    #[test]
    fn content_md5_is_checked() {
        let mut r = sdk_request();
        assert!(check_content_md5(&r, b"x").is_ok());
        r.headers.insert("content-md5".into(), content_md5(b"abc"));
        assert!(check_content_md5(&r, b"abc").is_ok());
        assert!(check_content_md5(&r, b"abd").is_err());
        // RFC 1321 test vector
        assert_eq!(content_md5(b"abc"), "kAFQmDzST7DWlj99KOF/cg==");
    }

    #[test]
    fn authorization_parsing() {
        assert_eq!(parse_authorization("acs:id:sig"), Some(("id", "sig")));
        assert_eq!(parse_authorization("acs:id:"), None);
        assert_eq!(parse_authorization("Bearer x"), None);
        assert_eq!(parse_authorization("acs:"), None);
    }

    #[test]
    fn push_string_to_sign_layout() {
        let mut h = BTreeMap::new();
        h.insert(
            "x-eventbridge-signature-timestamp".to_string(),
            "1700000000000".to_string(),
        );
        h.insert(
            "x-eventbridge-signature-method".to_string(),
            "HMAC-SHA1".to_string(),
        );
        h.insert(
            "x-eventbridge-signature-version".to_string(),
            "1.0".to_string(),
        );
        h.insert(
            "x-eventbridge-signature-url".to_string(),
            "https://k/public.pem".to_string(),
        );
        assert_eq!(
            push_string_to_sign("https://gw/alibaba/push/b", &h, b"{}"),
            "https://gw/alibaba/push/b\nx-eventbridge-signature-timestamp: 1700000000000\n\
             x-eventbridge-signature-method: HMAC-SHA1\nx-eventbridge-signature-version: 1.0\n\
             x-eventbridge-signature-url: https://k/public.pem\n{}\n"
        );
        h.insert(
            "x-eventbridge-signature-token".to_string(),
            "tok".to_string(),
        );
        assert!(
            push_string_to_sign("u", &h, b"").contains("x-eventbridge-signature-token: tok\n\n")
        );
    }

    const TEST_PUB: &str = include_str!("testdata/push_test_key.pub.pem");
    const TEST_KEY: &str = include_str!("testdata/push_test_key.json");

    /// Private-key operation with the test key (what Alibaba does with its own).
    fn private_encrypt(secret: &[u8]) -> Vec<u8> {
        let k: serde_json::Value = serde_json::from_str(TEST_KEY).expect("json");
        let big = |f: &str| {
            BigUint::parse_bytes(k[f].as_str().expect("string").as_bytes(), 10).expect("int")
        };
        let (n, d) = (big("n"), big("d"));
        let size = n.bits().div_ceil(8) as usize;
        let mut block = vec![0u8, 1];
        block.extend(std::iter::repeat_n(0xffu8, size - 3 - secret.len()));
        block.push(0);
        block.extend_from_slice(secret);
        let c = BigUint::from_bytes_be(&block).modpow(&d, &n).to_bytes_be();
        let mut out = vec![0u8; size - c.len()];
        out.extend(c);
        out
    }

    fn signed_push(url: &str, body: &[u8], ts_ms: i64) -> BTreeMap<String, String> {
        let mut h = BTreeMap::new();
        h.insert(
            "x-eventbridge-signature-timestamp".to_string(),
            ts_ms.to_string(),
        );
        h.insert(
            "x-eventbridge-signature-method".to_string(),
            "HMAC-SHA1".to_string(),
        );
        h.insert(
            "x-eventbridge-signature-version".to_string(),
            "1.0".to_string(),
        );
        h.insert(
            "x-eventbridge-signature-url".to_string(),
            "https://k/public.pem".to_string(),
        );
        let secret = b"0123456789abcdef";
        let sts = push_string_to_sign(url, &h, body);
        h.insert(
            "x-eventbridge-signature".to_string(),
            B64.encode(hmac_sha1(secret, sts.as_bytes())),
        );
        h.insert(
            "x-eventbridge-signature-secret".to_string(),
            B64.encode(private_encrypt(secret)),
        );
        h
    }

    #[test]
    fn push_signature_round_trip() {
        let key = RsaPublicKey::from_pem(TEST_PUB).expect("key");
        assert_eq!(
            key.public_decrypt(&private_encrypt(b"s3cret")).as_deref(),
            Some(&b"s3cret"[..])
        );
        assert_eq!(key.public_decrypt(&[1u8; 256]), None);
        assert_eq!(key.public_decrypt(&[1u8; 10]), None);
        let mut keys = BTreeMap::new();
        keys.insert("https://k/public.pem".to_string(), key);
        let now = 1_700_000_000_000;
        let h = signed_push("https://gw/alibaba/push/b", b"{\"id\":1}", now);
        assert_eq!(
            verify_push(
                "https://gw/alibaba/push/b",
                &h,
                b"{\"id\":1}",
                &keys,
                now + 5_000,
                60
            ),
            Ok(())
        );
        // seconds work too
        let hs = signed_push("u", b"", now / 1000);
        assert_eq!(verify_push("u", &hs, b"", &keys, now, 60), Ok(()));
        assert!(matches!(
            verify_push(
                "https://gw/alibaba/push/b",
                &h,
                b"{\"id\":2}",
                &keys,
                now,
                60
            ),
            Err(PushError::BadSignature(_))
        ));
        assert!(matches!(
            verify_push(
                "https://gw/alibaba/push/other",
                &h,
                b"{\"id\":1}",
                &keys,
                now,
                60
            ),
            Err(PushError::BadSignature(_))
        ));
        assert!(matches!(
            verify_push(
                "https://gw/alibaba/push/b",
                &h,
                b"{\"id\":1}",
                &keys,
                now + 61_000,
                60
            ),
            Err(PushError::Expired(_))
        ));
        assert!(matches!(
            verify_push(
                "https://gw/alibaba/push/b",
                &h,
                b"{\"id\":1}",
                &BTreeMap::new(),
                now,
                60
            ),
            Err(PushError::UntrustedKey(_))
        ));
        assert!(
            RsaPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn random_push_secrets_never_panic(secret in proptest::collection::vec(any::<u8>(), 0..300), sig in "\\PC{0,40}") {
            let key = RsaPublicKey::from_pem(TEST_PUB).expect("key");
            let _ = key.public_decrypt(&secret);
            let mut keys = BTreeMap::new();
            keys.insert("https://k/public.pem".to_string(), key);
            let mut h = signed_push("u", b"x", 0);
            h.insert("x-eventbridge-signature-secret".to_string(), B64.encode(&secret));
            h.insert("x-eventbridge-signature".to_string(), sig);
            prop_assert!(verify_push("u", &h, b"x", &keys, 0, 60).is_err());
        }

        #[test]
        fn random_requests_never_panic_the_verifier(
            headers in proptest::collection::btree_map("[a-z-]{1,30}", "\\PC{0,60}", 0..12),
            auth in "\\PC{0,80}",
            date in "\\PC{0,40}",
            path in "\\PC{0,40}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            now in any::<i64>(),
            skew in any::<u64>(),
        ) {
            let mut headers = headers;
            headers.insert("authorization".into(), auth);
            headers.insert("date".into(), date);
            let r = SignedRequest { method: "POST".into(), pathname: path, headers: headers.clone(), query: BTreeMap::new() };
            let _ = verify_request(&r, &keys(), now, skew);
            let _ = check_content_md5(&r, &body);
            let _ = verify_push("http://x/", &headers, &body, &BTreeMap::new(), now, skew);
        }

        #[test]
        fn sdk_shaped_requests_with_valid_signature_verify(nonce in "[0-9a-f]{32}", ct in "[a-z/+;= -]{0,40}") {
            let mut r = sdk_request();
            r.headers.insert("x-acs-signature-nonce".into(), nonce);
            r.headers.insert("content-type".into(), ct);
            let sig = signature(&string_to_sign(&r), "testsecret");
            r.headers.insert("authorization".into(), authorization("testid", &sig));
            prop_assert!(verify_request(&r, &keys(), now_of_request(), 60).is_ok());
        }
    }
}
