//! HTTP Digest authentication as SIP uses it (RFC 3261 §22): RFC 2617 with
//! `qop=auth` or the legacy no-qop form, and the RFC 7616 algorithms MD5 and
//! SHA-256.
//!
//! Server side: [`Challenge::to_header_value`], [`NonceIssuer`],
//! [`parse_credentials`] and [`verify`]. Client side: [`parse_challenge`] and
//! [`respond`]. Everything is sans-IO; times are passed in.

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest Authorization / WWW-Authenticate value accepted.
pub const MAX_HEADER_LEN: usize = 4096;
/// Most parameters accepted in one header value.
const MAX_PARAMS: usize = 32;
/// Hex digits of the keyed hash in a nonce (128 bits).
const NONCE_TAG_HEX_LEN: usize = 32;
/// Hex digits of the issue time in a nonce.
const NONCE_TIME_HEX_LEN: usize = 16;
/// Hex digits of the random salt in a nonce: two challenges of one call in
/// one second still get different nonces (an answer's count restarts at 1).
const NONCE_SALT_HEX_LEN: usize = 8;
/// How far in the future a nonce's issue time may be before it is treated as
/// stale; covers small clock steps between issue and check.
const NONCE_FUTURE_SKEW_SECS: u64 = 5;
/// The only quality of protection supported; `auth-int` would need the body.
const QOP_AUTH: &str = "auth";

/// Why a Digest header value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DigestError {
    /// The scheme is not `Digest` (e.g. `Basic`).
    #[error("authentication scheme is not Digest")]
    NotDigest,
    /// The value is longer than [`MAX_HEADER_LEN`].
    #[error("header value is {len} bytes, over the {limit}-byte limit")]
    TooLong {
        /// Length of the rejected value.
        len: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The parameter list does not follow the grammar.
    #[error("malformed Digest parameters: {0}")]
    Malformed(&'static str),
    /// A parameter appears twice.
    #[error("duplicate Digest parameter {0:?}")]
    DuplicateParam(String),
    /// A required parameter is absent.
    #[error("missing Digest parameter `{0}`")]
    MissingParam(&'static str),
    /// The algorithm is neither MD5 nor SHA-256.
    #[error("unsupported Digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The qop is not `auth`.
    #[error("unsupported Digest qop {0:?}")]
    UnsupportedQop(String),
    /// `nc` is not eight hex digits.
    #[error("Digest nonce count {0:?} is not 8 hex digits")]
    BadNonceCount(String),
}

/// Digest hash algorithm (RFC 7616 §3.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5`, the default when no algorithm is named.
    #[default]
    Md5,
    /// `SHA-256`.
    Sha256,
}

impl Algorithm {
    /// The name as written in headers.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Looks up an algorithm by its header name, case-insensitively.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        [Algorithm::Md5, Algorithm::Sha256]
            .into_iter()
            .find(|a| name.eq_ignore_ascii_case(a.name()))
    }

    /// Lowercase hex of the hash of `parts` joined with `:`.
    fn hash(self, parts: &[&str]) -> String {
        match self {
            Algorithm::Md5 => hash_joined::<Md5>(parts),
            Algorithm::Sha256 => hash_joined::<Sha256>(parts),
        }
    }
}

fn hash_joined<D: Digest>(parts: &[&str]) -> String {
    let mut hasher = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Protection space, shown to users and part of HA1.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Hash algorithm.
    pub algorithm: Algorithm,
    /// Opaque string the client must echo.
    pub opaque: Option<String>,
    /// The previous request used an expired nonce; retry without asking the
    /// user again.
    pub stale: bool,
    /// Whether `qop="auth"` is offered. Without it the legacy RFC 2069
    /// response is used.
    pub qop_auth: bool,
}

impl Challenge {
    /// A fresh challenge offering `qop="auth"`, with no opaque and not stale.
    pub fn new(realm: impl Into<String>, nonce: impl Into<String>, algorithm: Algorithm) -> Self {
        Challenge {
            realm: realm.into(),
            nonce: nonce.into(),
            algorithm,
            opaque: None,
            stale: false,
            qop_auth: true,
        }
    }

    /// Renders the header value, e.g.
    /// `Digest realm="izwi", nonce="...", algorithm=MD5, qop="auth"`.
    pub fn to_header_value(&self) -> String {
        let mut out = String::from("Digest ");
        push_quoted_param(&mut out, "realm", &self.realm);
        push_quoted_param(&mut out, "nonce", &self.nonce);
        push_param(&mut out, "algorithm", self.algorithm.name());
        if self.qop_auth {
            push_quoted_param(&mut out, "qop", QOP_AUTH);
        }
        if let Some(opaque) = &self.opaque {
            push_quoted_param(&mut out, "opaque", opaque);
        }
        if self.stale {
            push_param(&mut out, "stale", "true");
        }
        out
    }
}

/// Parameters of an `Authorization` / `Proxy-Authorization` Digest header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// User name (unescaped).
    pub username: String,
    /// Realm the client answered.
    pub realm: String,
    /// Nonce the client answered; check it with [`NonceIssuer::check`].
    pub nonce: String,
    /// Digest URI; the caller should compare it with the Request-URI.
    pub uri: String,
    /// The client's response hash.
    pub response: String,
    /// Hash algorithm (MD5 when absent).
    pub algorithm: Algorithm,
    /// Client nonce, present with qop.
    pub cnonce: Option<String>,
    /// Nonce count exactly as sent (8 hex digits), present with qop.
    pub nc: Option<String>,
    /// The qop value as sent (always `auth`, any case), if any.
    pub qop: Option<String>,
    /// Opaque value echoed from the challenge.
    pub opaque: Option<String>,
}

impl Credentials {
    /// The nonce count as a number, for replay tracking.
    pub fn nonce_count(&self) -> Option<u32> {
        self.nc
            .as_deref()
            .and_then(|nc| u32::from_str_radix(nc, 16).ok())
    }
}

/// What [`NonceIssuer::check`] concluded about a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceState {
    /// Issued by us and still fresh.
    Valid,
    /// Issued by us but too old (or from the future after a clock step):
    /// re-challenge with `stale=true` so the client retries silently.
    Stale,
    /// Not one of ours.
    Invalid,
}

/// Issues nonces that can be checked without storing them: each nonce is the
/// issue time in hex followed by a keyed hash of that time and of what the
/// nonce was issued for (its binding: the source and the call it challenged),
/// so a nonce answered for one call and source is worth nothing for another.
#[derive(Clone)]
pub struct NonceIssuer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceIssuer").finish_non_exhaustive()
    }
}

impl NonceIssuer {
    /// An issuer keyed with `secret`; share the secret between processes that
    /// must accept each other's nonces.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        NonceIssuer {
            secret: secret.as_ref().to_vec(),
        }
    }

    /// An issuer with a fresh random 256-bit secret.
    pub fn random() -> Self {
        NonceIssuer::new(rand::random::<[u8; 32]>())
    }

    /// A nonce stamped with `now_unix_secs`, good only for `binding`.
    pub fn issue(&self, now_unix_secs: u64, binding: &[u8]) -> String {
        let salt = format!("{:08x}", rand::random::<u32>());
        format!(
            "{now_unix_secs:016x}{salt}{}",
            self.tag(now_unix_secs, &salt, binding)
        )
    }

    /// Whether `nonce` is one of ours for `binding` and no older than `max_age_secs`.
    pub fn check(
        &self,
        nonce: &str,
        now_unix_secs: u64,
        max_age_secs: u64,
        binding: &[u8],
    ) -> NonceState {
        let Some(issued) = self.authentic_issue_time(nonce, binding) else {
            return NonceState::Invalid;
        };
        let from_future = issued > now_unix_secs.saturating_add(NONCE_FUTURE_SKEW_SECS);
        if from_future || now_unix_secs.saturating_sub(issued) > max_age_secs {
            NonceState::Stale
        } else {
            NonceState::Valid
        }
    }

    fn authentic_issue_time(&self, nonce: &str, binding: &[u8]) -> Option<u64> {
        if nonce.len() != NONCE_TIME_HEX_LEN + NONCE_SALT_HEX_LEN + NONCE_TAG_HEX_LEN
            || !is_lower_hex(nonce)
        {
            return None;
        }
        let (time_hex, rest) = nonce.split_at_checked(NONCE_TIME_HEX_LEN)?;
        let (salt, tag) = rest.split_at_checked(NONCE_SALT_HEX_LEN)?;
        let issued = u64::from_str_radix(time_hex, 16).ok()?;
        constant_time_eq(tag.as_bytes(), self.tag(issued, salt, binding).as_bytes())
            .then_some(issued)
    }

    /// HMAC-SHA256(secret, time ‖ salt ‖ binding), truncated. The time and
    /// salt have fixed widths, so no two inputs run together.
    fn tag(&self, issued: u64, salt: &str, binding: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any size");
        mac.update(&issued.to_be_bytes());
        mac.update(salt.as_bytes());
        mac.update(binding);
        let mut tag = hex::encode(mac.finalize().into_bytes());
        tag.truncate(NONCE_TAG_HEX_LEN);
        tag
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Compares without an early exit so timing does not reveal how many leading
/// bytes of a guessed response were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        // Lengths are public: they follow from the algorithm.
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether two SIP URIs are the same in the sense of RFC 3261 §19.1.4, as a
/// server compares a digest's `uri` with the Request-URI: the scheme and the
/// host compared without case, the user and password with it, the port as
/// written (a URI without one is not the same as one with the default), and
/// the parameters and headers compared as sets, names without case.
pub fn same_uri(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (UriParts::of(a), UriParts::of(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[derive(PartialEq, Eq)]
struct UriParts {
    scheme: String,
    user: String,
    host: String,
    params: Vec<(String, String)>,
    headers: Vec<String>,
}

impl UriParts {
    fn of(uri: &str) -> Option<UriParts> {
        let (scheme, rest) = uri.split_once(':')?;
        let (rest, headers) = match rest.split_once('?') {
            Some((r, h)) => (r, h),
            None => (rest, ""),
        };
        let (user, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (u, r),
            None => ("", rest),
        };
        let mut parts = rest.split(';');
        let host = parts.next()?.to_ascii_lowercase();
        let mut params: Vec<(String, String)> = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), v.to_ascii_lowercase()),
                None => (p.to_ascii_lowercase(), String::new()),
            })
            .collect();
        params.sort();
        let mut headers: Vec<String> = headers
            .split('&')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        headers.sort();
        Some(UriParts {
            scheme: scheme.to_ascii_lowercase(),
            user: user.to_string(),
            host,
            params,
            headers,
        })
    }
}

/// Parses an `Authorization` / `Proxy-Authorization` header value.
pub fn parse_credentials(header_value: &str) -> Result<Credentials, DigestError> {
    let params = Params::parse(header_value)?;
    let algorithm = params.algorithm()?;
    let qop = params.get("qop").map(str::to_owned);
    let (cnonce, nc) = match &qop {
        Some(qop) if !qop.eq_ignore_ascii_case(QOP_AUTH) => {
            return Err(DigestError::UnsupportedQop(qop.clone()));
        }
        Some(_) => {
            let nc = params.required("nc")?;
            if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(DigestError::BadNonceCount(nc.to_owned()));
            }
            (
                Some(params.required("cnonce")?.to_owned()),
                Some(nc.to_owned()),
            )
        }
        None => (None, None),
    };
    Ok(Credentials {
        username: params.required("username")?.to_owned(),
        realm: params.required("realm")?.to_owned(),
        nonce: params.required("nonce")?.to_owned(),
        uri: params.required("uri")?.to_owned(),
        response: params.required("response")?.to_owned(),
        algorithm,
        cnonce,
        nc,
        qop,
        opaque: params.get("opaque").map(str::to_owned),
    })
}

/// HA1 = H(username:realm:password), for servers that store it instead of
/// the password.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&[username, realm, password])
}

/// Whether the credentials' response matches `password` for a request with
/// this `method`. Checking the nonce, realm and URI is the caller's job.
pub fn verify(creds: &Credentials, method: &str, password: &str) -> bool {
    let ha1 = ha1(creds.algorithm, &creds.username, &creds.realm, password);
    verify_ha1(creds, method, &ha1)
}

/// Like [`verify`], from a stored HA1 (lowercase hex).
pub fn verify_ha1(creds: &Credentials, method: &str, ha1: &str) -> bool {
    let Some(expected) = expected_response(creds, method, ha1) else {
        return false;
    };
    // Hex case carries no meaning; some clients send uppercase.
    let given = creds.response.to_ascii_lowercase();
    constant_time_eq(expected.as_bytes(), given.as_bytes())
}

fn expected_response(creds: &Credentials, method: &str, ha1: &str) -> Option<String> {
    let algorithm = creds.algorithm;
    let ha2 = algorithm.hash(&[method, &creds.uri]);
    match &creds.qop {
        Some(qop) => {
            let nc = creds.nc.as_deref()?;
            let cnonce = creds.cnonce.as_deref()?;
            Some(algorithm.hash(&[ha1, &creds.nonce, nc, cnonce, qop, &ha2]))
        }
        None => Some(algorithm.hash(&[ha1, &creds.nonce, &ha2])),
    }
}

/// Parses a `WWW-Authenticate` / `Proxy-Authenticate` header value.
pub fn parse_challenge(header_value: &str) -> Result<Challenge, DigestError> {
    let params = Params::parse(header_value)?;
    let qop_auth = match params.get("qop") {
        None => false,
        Some(list)
            if list
                .split(',')
                .any(|q| q.trim().eq_ignore_ascii_case(QOP_AUTH)) =>
        {
            true
        }
        Some(list) => return Err(DigestError::UnsupportedQop(list.to_owned())),
    };
    Ok(Challenge {
        realm: params.required("realm")?.to_owned(),
        nonce: params.required("nonce")?.to_owned(),
        algorithm: params.algorithm()?,
        opaque: params.get("opaque").map(str::to_owned),
        stale: params
            .get("stale")
            .is_some_and(|s| s.eq_ignore_ascii_case("true")),
        qop_auth,
    })
}

/// Builds the `Authorization` / `Proxy-Authorization` value answering `ch`
/// for a request `method uri`. `nc` counts requests made with this nonce,
/// starting at 1.
pub fn respond(
    ch: &Challenge,
    method: &str,
    uri: &str,
    username: &str,
    password: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let algorithm = ch.algorithm;
    let ha1 = ha1(algorithm, username, &ch.realm, password);
    let ha2 = algorithm.hash(&[method, uri]);
    let nc = format!("{nc:08x}");
    let response = if ch.qop_auth {
        algorithm.hash(&[&ha1, &ch.nonce, &nc, cnonce, QOP_AUTH, &ha2])
    } else {
        algorithm.hash(&[&ha1, &ch.nonce, &ha2])
    };

    let mut out = String::from("Digest ");
    push_quoted_param(&mut out, "username", username);
    push_quoted_param(&mut out, "realm", &ch.realm);
    push_quoted_param(&mut out, "nonce", &ch.nonce);
    push_quoted_param(&mut out, "uri", uri);
    push_quoted_param(&mut out, "response", &response);
    push_param(&mut out, "algorithm", algorithm.name());
    if ch.qop_auth {
        push_quoted_param(&mut out, "cnonce", cnonce);
        push_param(&mut out, "qop", QOP_AUTH);
        push_param(&mut out, "nc", &nc);
    }
    if let Some(opaque) = &ch.opaque {
        push_quoted_param(&mut out, "opaque", opaque);
    }
    out
}

fn push_separator(out: &mut String) {
    if !out.ends_with(' ') {
        out.push_str(", ");
    }
}

fn push_param(out: &mut String, name: &str, value: &str) {
    push_separator(out);
    out.push_str(name);
    out.push('=');
    out.push_str(value);
}

fn push_quoted_param(out: &mut String, name: &str, value: &str) {
    push_separator(out);
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // A CR or LF would end the header and let a value inject new ones.
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The parameters of a Digest header value, names lowercased.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(header_value: &str) -> Result<Params, DigestError> {
        if header_value.len() > MAX_HEADER_LEN {
            return Err(DigestError::TooLong {
                len: header_value.len(),
                limit: MAX_HEADER_LEN,
            });
        }
        let trimmed = header_value.trim_start();
        let (scheme, rest) = trimmed
            .split_once(char::is_whitespace)
            .unwrap_or((trimmed, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest);
        }
        parse_param_list(rest).map(Params)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &'static str) -> Result<&str, DigestError> {
        self.get(name).ok_or(DigestError::MissingParam(name))
    }

    fn algorithm(&self) -> Result<Algorithm, DigestError> {
        match self.get("algorithm") {
            None => Ok(Algorithm::Md5),
            Some(name) => Algorithm::from_name(name)
                .ok_or_else(|| DigestError::UnsupportedAlgorithm(name.to_owned())),
        }
    }
}

/// Parses `name=value, name="quoted, value", ...` (RFC 7235 auth-param).
fn parse_param_list(input: &str) -> Result<Vec<(String, String)>, DigestError> {
    let mut params: Vec<(String, String)> = Vec::new();
    let mut rest = input;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return Ok(params);
        }
        if params.len() >= MAX_PARAMS {
            return Err(DigestError::Malformed("too many parameters"));
        }
        let (name, value, after) = parse_param(rest)?;
        if params.iter().any(|(n, _)| *n == name) {
            return Err(DigestError::DuplicateParam(name));
        }
        params.push((name, value));
        rest = after.trim_start();
        if !rest.is_empty() && !rest.starts_with(',') {
            return Err(DigestError::Malformed("expected ',' between parameters"));
        }
    }
}

/// Parses one `name=value` from the start of `input`, returning the
/// lowercased name, the unescaped value and what follows.
fn parse_param(input: &str) -> Result<(String, String, &str), DigestError> {
    let (name, rest) = split_token(input);
    if name.is_empty() {
        return Err(DigestError::Malformed("expected a parameter name"));
    }
    let rest = rest
        .trim_start()
        .strip_prefix('=')
        .ok_or(DigestError::Malformed("parameter without '='"))?
        .trim_start();
    let (value, rest) = match rest.strip_prefix('"') {
        Some(quoted) => parse_quoted(quoted)?,
        None => {
            let (token, rest) = split_token(rest);
            (token.to_owned(), rest)
        }
    };
    Ok((name.to_ascii_lowercase(), value, rest))
}

/// Splits off a token: everything up to whitespace, `,`, `=` or `"`.
fn split_token(input: &str) -> (&str, &str) {
    let end = input
        .find(|c: char| c.is_whitespace() || matches!(c, ',' | '=' | '"'))
        .unwrap_or(input.len());
    input.split_at_checked(end).unwrap_or((input, ""))
}

/// Reads a quoted-string body (after the opening quote), undoing `\`
/// escapes; returns the value and what follows the closing quote.
fn parse_quoted(input: &str) -> Result<(String, &str), DigestError> {
    let mut value = String::new();
    let mut chars = input.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, input.get(i + 1..).unwrap_or(""))),
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err(DigestError::Malformed("unterminated quoted string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC2617_AUTHORIZATION: &str = r#"Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#;

    fn rfc2617_challenge() -> Challenge {
        Challenge {
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".into()),
            ..Challenge::new(
                "testrealm@host.com",
                "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                Algorithm::Md5,
            )
        }
    }

    fn rfc7616_challenge() -> Challenge {
        Challenge {
            opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".into()),
            ..Challenge::new(
                "http-auth@example.org",
                "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                Algorithm::Sha256,
            )
        }
    }

    #[test]
    fn rfc2617_example_response() {
        let header = respond(
            &rfc2617_challenge(),
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            "0a4f113b",
            1,
        );
        assert!(
            header.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{header}"
        );
        assert!(header.contains("nc=00000001"));
        assert!(header.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
    }

    #[test]
    fn rfc2617_example_verifies_as_server() {
        let creds = parse_credentials(RFC2617_AUTHORIZATION).unwrap();
        assert_eq!(creds.username, "Mufasa");
        assert_eq!(creds.uri, "/dir/index.html");
        assert_eq!(creds.algorithm, Algorithm::Md5);
        assert_eq!(creds.nonce_count(), Some(1));
        assert_eq!(
            creds.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        assert!(verify(&creds, "GET", "Circle Of Life"));
        assert!(!verify(&creds, "GET", "circle of life"));
        assert!(!verify(&creds, "POST", "Circle Of Life"));
        let stored = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert!(verify_ha1(&creds, "GET", &stored));
    }

    #[test]
    fn rfc7616_sha256_example_response() {
        let header = respond(
            &rfc7616_challenge(),
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        );
        let expected = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1";
        assert!(
            header.contains(&format!("response=\"{expected}\"")),
            "{header}"
        );
        assert!(header.contains("algorithm=SHA-256"));
        let creds = parse_credentials(&header).unwrap();
        assert_eq!(creds.algorithm, Algorithm::Sha256);
        assert!(verify(&creds, "GET", "Circle of Life"));
    }

    #[test]
    fn round_trip_both_algorithms() {
        let issuer = NonceIssuer::new("shared secret");
        for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
            let challenge = Challenge::new("izwi", issuer.issue(1_000, b"x"), algorithm);
            let parsed = parse_challenge(&challenge.to_header_value()).unwrap();
            assert_eq!(parsed, challenge);

            let uri = "sip:agent@izwi.example";
            let header = respond(&parsed, "REGISTER", uri, "alice", "s3cr3t", "abc123", 7);
            let creds = parse_credentials(&header).unwrap();
            assert_eq!(creds.nc.as_deref(), Some("00000007"));
            assert_eq!(creds.uri, uri);
            assert!(verify(&creds, "REGISTER", "s3cr3t"), "{algorithm:?}");
            assert_eq!(
                issuer.check(&creds.nonce, 1_010, 300, b"x"),
                NonceState::Valid
            );

            assert!(!verify(&creds, "REGISTER", "s3cr3t!"));
            assert!(!verify(&creds, "INVITE", "s3cr3t"));
            let tampered = Credentials {
                nonce: issuer.issue(1_001, b"x"),
                ..creds.clone()
            };
            assert!(!verify(&tampered, "REGISTER", "s3cr3t"));
            let other_nc = Credentials {
                nc: Some("00000008".into()),
                ..creds.clone()
            };
            assert!(!verify(&other_nc, "REGISTER", "s3cr3t"));
            let wrong_algorithm = Credentials {
                algorithm: match algorithm {
                    Algorithm::Md5 => Algorithm::Sha256,
                    Algorithm::Sha256 => Algorithm::Md5,
                },
                ..creds
            };
            assert!(!verify(&wrong_algorithm, "REGISTER", "s3cr3t"));
        }
    }

    #[test]
    fn legacy_challenge_without_qop() {
        let challenge =
            parse_challenge(r#"Digest algorithm=MD5, realm="asterisk", nonce="1a2b3c4d""#).unwrap();
        assert!(!challenge.qop_auth);
        assert_eq!(challenge.opaque, None);
        let header = respond(
            &challenge,
            "INVITE",
            "sip:100@pbx",
            "100",
            "pw",
            "ignored",
            1,
        );
        assert!(!header.contains("qop") && !header.contains("cnonce") && !header.contains("nc="));
        let creds = parse_credentials(&header).unwrap();
        assert_eq!(creds.qop, None);
        assert!(verify(&creds, "INVITE", "pw"));
        assert!(!verify(&creds, "INVITE", "pw2"));
    }

    #[test]
    fn challenge_header_value_format() {
        let challenge = Challenge::new("izwi", "abc", Algorithm::Md5);
        assert_eq!(
            challenge.to_header_value(),
            r#"Digest realm="izwi", nonce="abc", algorithm=MD5, qop="auth""#
        );
        let stale = Challenge {
            stale: true,
            opaque: Some("op".into()),
            ..Challenge::new("izwi", "abc", Algorithm::Sha256)
        };
        let value = stale.to_header_value();
        assert!(value.ends_with(r#"algorithm=SHA-256, qop="auth", opaque="op", stale=true"#));
        assert_eq!(parse_challenge(&value).unwrap(), stale);
    }

    #[test]
    fn parses_trunk_challenges() {
        let ch = parse_challenge(
            r#"digest REALM="sip.trunk.example",Nonce="Y2hhbGxlbmdl",QOP="auth,auth-int",STALE=TRUE,Algorithm=sha-256,opaque="a,b""#,
        )
        .unwrap();
        assert_eq!(ch.realm, "sip.trunk.example");
        assert_eq!(ch.nonce, "Y2hhbGxlbmdl");
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        assert!(ch.qop_auth && ch.stale);
        assert_eq!(ch.opaque.as_deref(), Some("a,b"));

        assert_eq!(
            parse_challenge(r#"Digest realm="r", nonce="n", qop="auth-int""#),
            Err(DigestError::UnsupportedQop("auth-int".into()))
        );
        assert_eq!(
            parse_challenge(r#"Digest realm="r", nonce="n", algorithm=MD5-sess"#),
            Err(DigestError::UnsupportedAlgorithm("MD5-sess".into()))
        );
        assert_eq!(
            parse_challenge(r#"Digest realm="r""#),
            Err(DigestError::MissingParam("nonce"))
        );
    }

    #[test]
    fn credentials_parsing_is_flexible_but_strict_where_it_matters() {
        let creds = parse_credentials(
            r#"DIGEST Response="ABCDEF", URI=sip:x@y, nonce = "n", Realm="r, with comma", username="say \"hi\" \\o/""#,
        )
        .unwrap();
        assert_eq!(creds.username, r#"say "hi" \o/"#);
        assert_eq!(creds.realm, "r, with comma");
        assert_eq!(creds.uri, "sip:x@y");
        assert_eq!(creds.response, "ABCDEF");
        assert_eq!(creds.algorithm, Algorithm::Md5);

        let base = r#"Digest username="u", realm="r", nonce="n", uri="sip:a", response="x""#;
        assert!(parse_credentials(base).is_ok());
        assert_eq!(
            parse_credentials(&format!("{base}, qop=auth, cnonce=\"c\"")),
            Err(DigestError::MissingParam("nc"))
        );
        assert!(matches!(
            parse_credentials(&format!("{base}, qop=auth, cnonce=\"c\", nc=1")),
            Err(DigestError::BadNonceCount(_))
        ));
        assert!(matches!(
            parse_credentials(&format!("{base}, qop=auth-int, cnonce=\"c\", nc=00000001")),
            Err(DigestError::UnsupportedQop(_))
        ));
        assert_eq!(
            parse_credentials(&format!("{base}, Username=\"v\"")),
            Err(DigestError::DuplicateParam("username".into()))
        );
        assert_eq!(
            parse_credentials(r#"Basic dXNlcjpwYXNz"#),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            parse_credentials(r#"Digest realm="r", nonce="n", uri="u", response="x""#),
            Err(DigestError::MissingParam("username"))
        );
    }

    #[test]
    fn response_hex_case_is_ignored() {
        let mut creds = parse_credentials(RFC2617_AUTHORIZATION).unwrap();
        creds.response = creds.response.to_ascii_uppercase();
        assert!(verify(&creds, "GET", "Circle Of Life"));
    }

    #[test]
    fn quoted_values_cannot_inject_headers() {
        let ch = Challenge::new("izwi\r\nX-Evil: 1", "n\"", Algorithm::Md5);
        let value = ch.to_header_value();
        assert!(!value.contains('\r') && !value.contains('\n'));
        assert_eq!(parse_challenge(&value).unwrap().nonce, "n\"");
    }

    #[test]
    fn nonce_lifecycle() {
        let issuer = NonceIssuer::new(b"k1");
        let b = b"192.0.2.1 call-1";
        let nonce = issuer.issue(1_700_000_000, b);
        assert_eq!(nonce.len(), 56);
        assert_ne!(
            nonce,
            issuer.issue(1_700_000_000, b),
            "salted: never the same twice"
        );
        let check = |now| issuer.check(&nonce, now, 60, b);
        assert_eq!(check(1_700_000_000), NonceState::Valid);
        assert_eq!(check(1_700_000_060), NonceState::Valid);
        assert_eq!(check(1_700_000_061), NonceState::Stale);
        // Issued "in the future": a clock step back, not a forgery.
        assert_eq!(check(1_699_999_990), NonceState::Stale);
        assert_eq!(check(1_699_999_998), NonceState::Valid);
    }

    #[test]
    fn a_nonce_is_good_only_for_what_it_was_issued_for() {
        let issuer = NonceIssuer::new(b"k1");
        let nonce = issuer.issue(1_000, b"192.0.2.1 call-1");
        assert_eq!(
            issuer.check(&nonce, 1_000, 60, b"192.0.2.1 call-1"),
            NonceState::Valid
        );
        for other in [&b"192.0.2.1 call-2"[..], b"192.0.2.9 call-1", b""] {
            assert_eq!(
                issuer.check(&nonce, 1_000, 60, other),
                NonceState::Invalid,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn forged_nonces_are_invalid() {
        let issuer = NonceIssuer::new(b"k1");
        let nonce = issuer.issue(1_000, b"");
        let now = 1_000;
        assert_eq!(
            NonceIssuer::new(b"k2").check(&nonce, now, 60, b""),
            NonceState::Invalid
        );

        // Re-stamping with a newer time keeps the old tag, which no longer fits.
        let restamped = format!("{:016x}{}", 2_000u64, &nonce[16..]);
        assert_eq!(restamped.len(), nonce.len());
        assert_eq!(
            issuer.check(&restamped, 2_000, 60, b""),
            NonceState::Invalid
        );

        let mut flipped = nonce.clone().into_bytes();
        flipped[55] = if flipped[55] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(issuer.check(&flipped, now, 60, b""), NonceState::Invalid);

        for junk in [
            "",
            "zz",
            &nonce[..55],
            &format!("{nonce}0"),
            &nonce.to_ascii_uppercase(),
        ] {
            assert_eq!(
                issuer.check(junk, now, 60, b""),
                NonceState::Invalid,
                "{junk:?}"
            );
        }
        let random = NonceIssuer::random();
        assert_eq!(
            random.check(&random.issue(5, b""), 5, 1, b""),
            NonceState::Valid
        );
        assert_eq!(random.check(&nonce, now, 60, b""), NonceState::Invalid);
        assert!(!format!("{random:?}").contains("k1"));
    }

    #[test]
    fn uris_compare_as_rfc_3261_says() {
        for (a, b) in [
            ("sip:izwi@192.0.2.9", "sip:izwi@192.0.2.9"),
            ("sip:izwi@Example.ORG", "SIP:izwi@example.org"),
            ("sip:izwi@h;transport=TCP;lr", "sip:izwi@h;lr;transport=tcp"),
            ("sip:izwi@h?b=2&a=1", "sip:izwi@h?a=1&b=2"),
        ] {
            assert!(same_uri(a, b), "{a} = {b}");
        }
        for (a, b) in [
            ("sip:izwi@h", "sip:IZWI@h"),
            ("sip:izwi@h", "sip:izwi@h:5060"),
            ("sip:izwi@h", "sip:h"),
            ("sip:izwi@h", "sips:izwi@h"),
            ("sip:izwi@h;transport=tcp", "sip:izwi@h"),
            ("sip:izwi@h", "garbage"),
        ] {
            assert!(!same_uri(a, b), "{a} ≠ {b}");
        }
    }

    #[test]
    fn malformed_headers_never_panic() {
        let corpus = [
            "",
            "Digest",
            "Digest ",
            "Digest ,,,, ",
            "Digest =",
            "Digest realm",
            "Digest realm=",
            "Digest realm=\"unterminated",
            "Digest realm=\"trailing backslash\\",
            "Digest realm=\"a\"nonce=\"b\"",
            "Digest realm=\"é\", nonce=\"ü\"",
            "Digest \u{0}=\u{0}",
            "Digest \"=\"",
            "   Digest   realm = \"r\" ,  nonce = n  ",
        ];
        for header in corpus {
            let _ = parse_credentials(header);
            let _ = parse_challenge(header);
        }
        assert!(parse_challenge("   Digest   realm = \"r\" ,  nonce = n  ").is_ok());
        assert!(parse_challenge("Digest realm=\"a\"nonce=\"b\"").is_err());

        let huge = format!("Digest realm=\"{}\"", "a".repeat(MAX_HEADER_LEN));
        assert!(matches!(
            parse_challenge(&huge),
            Err(DigestError::TooLong { .. })
        ));
        let many: String = (0..40).map(|i| format!("p{i}=v, ")).collect();
        assert!(parse_challenge(&format!("Digest {many}")).is_err());

        // Every prefix of real headers, with and without a stray quote.
        let mut sources = vec![RFC2617_AUTHORIZATION.to_owned()];
        sources.push(rfc7616_challenge().to_header_value());
        for source in &sources {
            for (cut, _) in source.char_indices() {
                for tail in ["", "\"", "\\", "=", ","] {
                    let s = format!("{}{tail}", &source[..cut]);
                    let _ = parse_credentials(&s);
                    let _ = parse_challenge(&s);
                }
            }
        }
    }
}
