//! Who may call the operator API, and how often.
//!
//! Two kinds of credential:
//! - a bearer JWT (`Authorization: Bearer <jwt>`), HS256 with a configured
//!   shared secret or RS256 with a configured public key. The algorithm is
//!   chosen by our configuration, never by the token: a header naming anything
//!   we are not configured for (`none`, HS512, HS256 when only RS256 is set up:
//!   the key-confusion attack) is refused as [`AuthError::Algorithm`] before any
//!   signature is looked at. `exp`, `aud` and `sub` are required; `nbf` is
//!   honoured when present; clock leeway is [`JWT_LEEWAY_SECS`].
//! - an API key (`X-Api-Key`), configured as `NAME:KEY` or `NAME:KEY:admin`.
//!   Only SHA-256 digests of the keys are kept after start-up, and they are
//!   compared in constant time.
//!
//! A request carrying both is refused as malformed: one credential, one
//! principal. Each principal (JWT subject or API-key name; the two namespaces
//! are kept apart) gets a token bucket of `rate_per_minute` requests, refilled
//! continuously. Failed authentications are not counted against anyone.
//!
//! Pure logic: no HTTP types; the caller passes header values in and maps
//! [`AuthError::status`] to the response.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::limits::TokenBuckets;

/// The shortest API key accepted.
pub const MIN_API_KEY_LEN: usize = 16;
/// The shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_JWT_SECRET_LEN: usize = 32;
/// Clock skew allowed on `exp` and `nbf`.
pub const JWT_LEEWAY_SECS: u64 = 30;
/// Principals the rate limiter remembers at most; the least recently seen go first.
pub const MAX_PRINCIPALS: usize = 10_000;
/// Longest bearer token looked at.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest JWT subject accepted (it names a rate-limit bucket and shows in logs).
const MAX_SUBJECT_LEN: usize = 256;
/// Longest API-key name.
const MAX_KEY_NAME_LEN: usize = 64;

/// What the authenticator is built from (the `[api]` settings, with the public
/// key file already read).
#[derive(Clone, Default)]
pub struct AuthSettings {
    /// HS256 shared secret; empty: HS256 tokens are not accepted.
    pub jwt_secret: String,
    /// RS256 public key, PEM text; empty: RS256 tokens are not accepted.
    pub jwt_public_key_pem: String,
    /// Required `aud`.
    pub audience: String,
    /// API keys: entries "NAME:KEY" or "NAME:KEY:admin" (KEY at least 16 chars).
    pub api_keys: Vec<String>,
    /// Requests per minute per principal (JWT subject or API key name); 0 disables the limit.
    pub rate_per_minute: u32,
}

impl fmt::Debug for AuthSettings {
    /// Never shows a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("jwt_secret_set", &!self.jwt_secret.is_empty())
            .field("jwt_public_key_set", &!self.jwt_public_key_pem.is_empty())
            .field("audience", &self.audience)
            .field("api_keys", &self.api_keys.len())
            .field("rate_per_minute", &self.rate_per_minute)
            .finish()
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The JWT `sub`, or the API key's NAME.
    pub name: String,
    pub admin: bool,
    pub via: Via,
    /// When the credential stops being valid (a JWT's `exp`, Unix seconds);
    /// an API key does not expire.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// For admin routes: `Forbidden` unless the principal is an admin.
    pub fn require_admin(&self) -> Result<(), AuthError> {
        if self.admin {
            Ok(())
        } else {
            Err(AuthError::Forbidden)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    Jwt,
    ApiKey,
}

/// Why a request is refused. Messages never carry credential material.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credential at all.
    #[error("no credentials")]
    Missing,
    /// Not a `Bearer` JWT, not decodable, both a JWT and an API key, or a
    /// required claim (`exp`, `sub`) absent or of the wrong type.
    #[error("malformed credentials")]
    Malformed,
    /// Past `exp` (or before `nbf`), beyond the leeway.
    #[error("the token has expired or is not yet valid")]
    Expired,
    /// `aud` absent or without our audience.
    #[error("the token is meant for another audience")]
    Audience,
    /// The signature does not verify with our key.
    #[error("the token's signature does not verify")]
    Signature,
    /// The token's algorithm is not one we are configured for (`none` included).
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// An API key that is not configured.
    #[error("unknown API key")]
    UnknownKey,
    /// Authenticated, but the route needs an admin.
    #[error("admin rights required")]
    Forbidden,
    /// Over the principal's rate limit.
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
}

impl AuthError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::Expired
            | AuthError::Audience
            | AuthError::Signature
            | AuthError::Algorithm
            | AuthError::UnknownKey => 401,
            AuthError::Forbidden => 403,
            AuthError::RateLimited { .. } => 429,
        }
    }

    /// A short fixed name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Expired => "expired",
            AuthError::Audience => "audience",
            AuthError::Signature => "signature",
            AuthError::Algorithm => "algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Forbidden => "forbidden",
            AuthError::RateLimited { .. } => "rate_limited",
        }
    }
}

/// A setting the authenticator cannot be built from. Names the setting (and the
/// entry's position for API keys) but never echoes a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    #[error("api.jwt_secret is too short: {len} bytes, at least {MIN_JWT_SECRET_LEN} needed")]
    JwtSecretTooShort { len: usize },
    #[error("api.jwt_public_key is not usable: {reason}")]
    PublicKey { reason: &'static str },
    #[error("api.jwt_audience must be set when JWT authentication is configured")]
    AudienceMissing,
    #[error("api.api_keys entry {index}: {problem}")]
    ApiKeyEntry { index: usize, problem: &'static str },
    #[error("api.api_keys entry {index}: the name is already used by entry {first}")]
    DuplicateApiKeyName { index: usize, first: usize },
    #[error("api.api_keys entry {index}: the key is the same as entry {first}'s")]
    DuplicateApiKey { index: usize, first: usize },
}

struct ApiKey {
    name: String,
    digest: [u8; 32],
    admin: bool,
}

/// Checks credentials and rate limits. `Send + Sync`: share one behind an `Arc`.
pub struct Authenticator {
    hs256: Option<(DecodingKey, Validation)>,
    rs256: Option<(DecodingKey, Validation)>,
    api_keys: Vec<ApiKey>,
    limiter: Option<Mutex<RateLimiter>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("api_keys", &self.api_keys.len())
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

impl Authenticator {
    pub fn new(s: &AuthSettings) -> Result<Authenticator, AuthConfigError> {
        let audience = s.audience.trim();
        let hs256 = if s.jwt_secret.is_empty() {
            None
        } else {
            if s.jwt_secret.len() < MIN_JWT_SECRET_LEN {
                return Err(AuthConfigError::JwtSecretTooShort {
                    len: s.jwt_secret.len(),
                });
            }
            Some((
                DecodingKey::from_secret(s.jwt_secret.as_bytes()),
                validation(Algorithm::HS256, audience),
            ))
        };
        let pem = s.jwt_public_key_pem.trim();
        let rs256 = if pem.is_empty() {
            None
        } else {
            if pem.contains("PRIVATE KEY") {
                return Err(AuthConfigError::PublicKey {
                    reason: "it holds a private key; give the public key (openssl pkey -pubout)",
                });
            }
            let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                AuthConfigError::PublicKey {
                    reason: "not an RSA public key in PEM (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)",
                }
            })?;
            Some((key, validation(Algorithm::RS256, audience)))
        };
        if (hs256.is_some() || rs256.is_some()) && audience.is_empty() {
            return Err(AuthConfigError::AudienceMissing);
        }
        let api_keys = parse_api_keys(&s.api_keys)?;
        let limiter = (s.rate_per_minute > 0)
            .then(|| Mutex::new(RateLimiter::new(s.rate_per_minute, MAX_PRINCIPALS)));
        Ok(Authenticator {
            hs256,
            rs256,
            api_keys,
            limiter,
        })
    }

    /// Whether any way to authenticate is configured (otherwise the API is closed: every request 401).
    pub fn configured(&self) -> bool {
        self.hs256.is_some() || self.rs256.is_some() || !self.api_keys.is_empty()
    }

    /// `authorization`: the Authorization header value ("Bearer <jwt>"); `api_key`: the X-Api-Key header value.
    /// Checks the credential, then the rate limit of the principal it names.
    /// Empty (or all-blank) header values count as absent.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
        now: Instant,
    ) -> Result<Principal, AuthError> {
        let authorization = authorization.map(str::trim).filter(|v| !v.is_empty());
        let api_key = api_key.map(str::trim).filter(|v| !v.is_empty());
        let principal = match (authorization, api_key) {
            (None, None) => return Err(AuthError::Missing),
            (Some(_), Some(_)) => return Err(AuthError::Malformed),
            (Some(header), None) => self.check_bearer(header)?,
            (None, Some(key)) => self.check_api_key(key)?,
        };
        self.check_rate(&principal, now)?;
        Ok(principal)
    }

    /// Counts a request of `principal` against its rate limit.
    pub fn check_rate(&self, principal: &Principal, now: Instant) -> Result<(), AuthError> {
        if let Some(limiter) = &self.limiter {
            limiter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .check(principal.via, &principal.name, now)?;
        }
        Ok(())
    }

    fn check_bearer(&self, header: &str) -> Result<Principal, AuthError> {
        let (scheme, token) = header
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        // Our configuration picks the key; the header only has to agree with it.
        let (key, validation) = match header_alg(token)?.as_str() {
            "HS256" => self.hs256.as_ref(),
            "RS256" => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or(AuthError::Algorithm)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(jwt_error)?
            .claims;
        let admin = claims.is_admin();
        let name = claims
            .sub
            .filter(|s| !s.is_empty() && s.len() <= MAX_SUBJECT_LEN)
            .ok_or(AuthError::Malformed)?;
        Ok(Principal {
            name,
            admin,
            via: Via::Jwt,
            expires_at: claims
                .exp
                .as_ref()
                .and_then(serde_json::Value::as_f64)
                .map(|e| e.max(0.0) as u64),
        })
    }

    fn check_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let digest = sha256(key);
        // Every entry is compared, each in constant time.
        let mut found = None;
        for entry in &self.api_keys {
            if ct_eq(&entry.digest, &digest) && found.is_none() {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(AuthError::UnknownKey)?;
        Ok(Principal {
            name: entry.name.clone(),
            admin: entry.admin,
            via: Via::ApiKey,
            expires_at: None,
        })
    }
}

fn validation(alg: Algorithm, audience: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = JWT_LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    v
}

/// The claims we read beyond those `jsonwebtoken` validates.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    /// Checked by the validation already; kept for how long a session lasts.
    exp: Option<serde_json::Value>,
    admin: Option<serde_json::Value>,
    role: Option<serde_json::Value>,
    scope: Option<serde_json::Value>,
}

impl Claims {
    /// `"admin": true`, `"role": "admin"`, or `admin` among the space-separated `scope`.
    fn is_admin(&self) -> bool {
        self.admin == Some(serde_json::Value::Bool(true))
            || self.role.as_ref().and_then(|r| r.as_str()) == Some("admin")
            || self
                .scope
                .as_ref()
                .and_then(|s| s.as_str())
                .is_some_and(|s| s.split_whitespace().any(|w| w == "admin"))
    }
}

/// The `alg` a compact JWS names, read by hand so that names `jsonwebtoken`
/// does not know (`none`) come out as an algorithm problem, not a parse error.
fn header_alg(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
        /// RFC 7515 §4.1.11: extensions we do not understand must be refused.
        crit: Option<serde_json::Value>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed);
    }
    Ok(header.alg)
}

fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => AuthError::Expired,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::Audience,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::Crypto(_) => AuthError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
        // Missing `exp`/`sub`, bad base64 or JSON, wrong claim types.
        _ => AuthError::Malformed,
    }
}

fn parse_api_keys(entries: &[String]) -> Result<Vec<ApiKey>, AuthConfigError> {
    let mut keys: Vec<ApiKey> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let index = i + 1;
        let bad = |problem| AuthConfigError::ApiKeyEntry { index, problem };
        let mut fields = entry.trim().splitn(3, ':');
        let name = fields.next().unwrap_or_default();
        let key = fields
            .next()
            .ok_or_else(|| bad("expected NAME:KEY or NAME:KEY:admin"))?;
        let admin = match fields.next() {
            None => false,
            Some("admin") => true,
            Some(_) => {
                return Err(bad(
                    "the third field may only be `admin` (keys cannot contain `:`)",
                ));
            }
        };
        if name.is_empty()
            || name.len() > MAX_KEY_NAME_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad(
                "the name must be 1 to 64 of A-Z a-z 0-9 - _ . (it shows in logs)",
            ));
        }
        if key.chars().count() < MIN_API_KEY_LEN {
            return Err(bad("the key is shorter than 16 characters"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "the key must be printable ASCII without spaces (it travels in a header)",
            ));
        }
        let digest = sha256(key);
        if let Some(first) = keys.iter().position(|k| k.name == name) {
            return Err(AuthConfigError::DuplicateApiKeyName {
                index,
                first: first + 1,
            });
        }
        if let Some(first) = keys.iter().position(|k| k.digest == digest) {
            return Err(AuthConfigError::DuplicateApiKey {
                index,
                first: first + 1,
            });
        }
        keys.push(ApiKey {
            name: name.to_owned(),
            digest,
            admin,
        });
    }
    Ok(keys)
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Equality whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Token buckets per principal: `per_minute` deep, refilled continuously at
/// `per_minute` a minute.
struct RateLimiter {
    buckets: TokenBuckets<(Via, String)>,
}

impl RateLimiter {
    fn new(per_minute: u32, max_entries: usize) -> RateLimiter {
        let capacity = f64::from(per_minute);
        RateLimiter {
            buckets: TokenBuckets::new(capacity, capacity / 60.0, max_entries),
        }
    }

    /// Takes one token from the principal's bucket, or says how long until there is one.
    fn check(&mut self, via: Via, name: &str, now: Instant) -> Result<(), AuthError> {
        self.buckets
            .take(&(via, name.to_owned()), now)
            .map_err(|wait| AuthError::RateLimited {
                retry_after_secs: (wait.as_secs_f64().ceil() as u64).max(1),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;
    use std::time::{SystemTime, UNIX_EPOCH};

    const SECRET: &str = "test-hs256-secret-0123456789abcdef-xyz";
    const AUD: &str = "izwi-api";

    /// Test-only RSA key pair A (2048-bit, generated with openssl genpkey).
    const PRIVATE_A: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCN8qDbGKXufkAQ
bo/6rgZWzrsFBiXQ46HDvYxWo59p8ZXsv79jaH0cqeW65Mdoars/SONttYqw1wxW
xnpid8kg6dV8pAXo/5c8XgE4sTXCF7PFvgQeRURluNKmTKytilr+4XTG7mvQiRUX
DE/RqPqkvddf4++V1DRE5rkO7APafPDEH+G4yCi758PRw7BXd7iBFKfH9LkJ2JIl
4USgBzNHTjPnfu1jPKmBmiEH8LanxUTryE4/Dy4XAlB4OTfFYIy/knQzkKn2ab9/
kRDIBuVGEV6flNplzpPbudFsCyJeKjSe7Quk3ppP+M2m5oaQtPa7AmhpV6Waelql
aw7Sv287AgMBAAECggEAH+jNkUMqtgDKjQcVtcAeK7CAaUI3CQzK5hI7tJRGt024
Ksb2ErY//cwRmSBp1Ua8/h54BcccPOGy4+TtSSptW8lFFSZYL8cZK9hkBOcNUyr5
3jd3fIiMtiNEs16kKMTj7M0o77lUIkZWp948KUEHyzXj7ynxx2gzMdP+AOU8foZm
56uLwoREl3mHExheHHL5bfI57bvAP7x1wQv/2X5JYesLs5Ch5GO2ltlf4mE6zUzs
szAVOasEoCtKTYRXv6zB800fJlY9eUQwcHbDLdMstbTxg355bmiVi3cBbX9/7DpN
Fe3kD2Fk4b24padqF21pkiDh5XJvoCWUszzJEDp4wQKBgQDExAtRM88x6wVizesx
+rLuf4/rHP1SrFizXQSESag20Mh4ZhOtRoXOr95zvgFZw10B9owfcsfr3YN/rwn+
nS6SFRwsbZbGh9l0OajX9c2eYyydUBLyrHe/q2d/fJ+Uc0FQag+MmnWkA6vAEMeA
xQFHJP2Ib0jSljrsP6CxzKbNwQKBgQC4rfocJciGbc0XgpUhPGdFRsvM8RGn+How
M8sOGzOXJTx0FgRzlv3AXv8TlINfhjR/LuB6xcZ52jQvDF5M57gtEv+DM60az5L3
aUPPrtAYlqsuyug+4wQ9Kxcg81/jK/R3qygPKDPxEvTi66OILLlKM6soy9JjK8ad
YNaiekZz+wKBgEgM+Y/shsxioQBDIwKUKH1I3KxdWy2wynIzd3nxdtVLsnzT9BSZ
JFpA8BY110zFSwNzAnBpmWd3H7XbpK9FY04+yKhEINfl2uzCSF98NKTw799S+P0/
xkG7RBTcz5qOcbY+gB8eWEGMzpFwE33FpeglVWlmRqZGOKFV00QICnSBAoGBAICs
Rx0hfiubiVAeHYXArjtobkrmk+SyjX/UNmAnt7RRr2M6i/N1emt0RMkBqt79hMow
gRtJfVYdIEq/lVyD/qD5IanqcWvCwKU9ZI/pPvhC0haSLWrThXqQ8VZ1+5MuZvCS
AiE9Y6NOD+2jPJd+gcMfaNvN11Jdh87TT/h4tWnNAoGBAIIAaCxB2a5s3av4ZVs6
HG1TlJdXZq8iMTIrneoqwhd3HopD++j/OfopByjPMxB+b2Q0/4lKbOzBc9xjU34E
97h6RWYqTKnzEuAUz9rYl1oY4uRMPJvw/bebdWG/EuWSG6YrcRDqYLIIXq6WWJcI
SE/lwiuPsgjoH91Y0h35rzWp
-----END PRIVATE KEY-----";
    const PUBLIC_A: &str = r"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAjfKg2xil7n5AEG6P+q4G
Vs67BQYl0OOhw72MVqOfafGV7L+/Y2h9HKnluuTHaGq7P0jjbbWKsNcMVsZ6YnfJ
IOnVfKQF6P+XPF4BOLE1whezxb4EHkVEZbjSpkysrYpa/uF0xu5r0IkVFwxP0aj6
pL3XX+PvldQ0ROa5DuwD2nzwxB/huMgou+fD0cOwV3e4gRSnx/S5CdiSJeFEoAcz
R04z537tYzypgZohB/C2p8VE68hOPw8uFwJQeDk3xWCMv5J0M5Cp9mm/f5EQyAbl
RhFen5TaZc6T27nRbAsiXio0nu0LpN6aT/jNpuaGkLT2uwJoaVelmnpapWsO0r9v
OwIDAQAB
-----END PUBLIC KEY-----";
    /// The public half of an unrelated key pair B.
    const PUBLIC_B: &str = r"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApO/DjIS1hljF00uN2Y/k
IPChbysUSZ96vjU0dn8TAbieH/mTqn7yNrTG34siuIXMFVAUn71wjS8OlW6q0OOU
+Fhb/WRjL/oeklc0iRaSgWaK7vKhW+7zpF9VosXGhpp3vfHu94mnr/msXvRgTi7z
qDkEmbpDuVoDGl7m1ZlXvjwee7hEVgjkXAtPS8krO26zuD5oBDwMfVCTIvbQURfn
Z/EXdGjKTYRQs0fgTkPxW4kiD02hpbhVGqAP4gOs64bqf7GnpOCnFGhFbnG9W1M/
apiDTAjwqRc7uEWctCL3EmLVXZUJsPwsTbkGaoDBFUhh9Zev0X46RKjtJqgfIHZO
KQIDAQAB
-----END PUBLIC KEY-----";

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(sub: &str) -> serde_json::Value {
        json!({ "sub": sub, "aud": AUD, "exp": unix_now() + 600 })
    }

    fn with(mut base: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        base[key] = value;
        base
    }

    fn without(mut base: serde_json::Value, key: &str) -> serde_json::Value {
        base.as_object_mut().unwrap().remove(key);
        base
    }

    fn hs(secret: &str, claims: &serde_json::Value) -> String {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Bearer {token}")
    }

    fn rs(claims: &serde_json::Value) -> String {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            claims,
            &EncodingKey::from_rsa_pem(PRIVATE_A.as_bytes()).unwrap(),
        )
        .unwrap();
        format!("Bearer {token}")
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn hs_auth() -> Authenticator {
        Authenticator::new(&AuthSettings {
            jwt_secret: SECRET.into(),
            audience: AUD.into(),
            ..AuthSettings::default()
        })
        .unwrap()
    }

    fn rs_auth(public: &str) -> Authenticator {
        Authenticator::new(&AuthSettings {
            jwt_public_key_pem: public.into(),
            audience: AUD.into(),
            ..AuthSettings::default()
        })
        .unwrap()
    }

    /// The principal a token names; its `exp` is checked to come through,
    /// then left out so that the principals compare by who they are.
    fn jwt(auth: &Authenticator, header: &str) -> Result<Principal, AuthError> {
        auth.authenticate(Some(header), None, Instant::now())
            .map(|p| {
                assert!(p.expires_at.is_some_and(|e| e + 3600 > unix_now()), "{p:?}");
                Principal {
                    expires_at: None,
                    ..p
                }
            })
    }

    fn key(auth: &Authenticator, key: &str) -> Result<Principal, AuthError> {
        auth.authenticate(None, Some(key), Instant::now())
    }

    fn user(name: &str, admin: bool, via: Via) -> Principal {
        Principal {
            name: name.into(),
            admin,
            via,
            expires_at: None,
        }
    }

    #[test]
    fn hs256_valid_tokens_name_their_subject_and_admin_rights() {
        let auth = hs_auth();
        assert!(auth.configured());
        let c = claims("alice");
        assert_eq!(
            jwt(&auth, &hs(SECRET, &c)),
            Ok(user("alice", false, Via::Jwt))
        );
        // Scheme is case-insensitive; audience may be a list.
        let listed = with(c.clone(), "aud", json!(["other", AUD]));
        let lower = hs(SECRET, &listed).replacen("Bearer", "bearer", 1);
        assert_eq!(jwt(&auth, &lower), Ok(user("alice", false, Via::Jwt)));

        for (k, v) in [
            ("admin", json!(true)),
            ("role", json!("admin")),
            ("scope", json!("calls:read admin")),
        ] {
            let p = jwt(&auth, &hs(SECRET, &with(c.clone(), k, v))).unwrap();
            assert!(p.admin, "{k} should grant admin");
            assert_eq!(p.require_admin(), Ok(()));
        }
        for (k, v) in [
            ("admin", json!(false)),
            ("admin", json!("true")),
            ("role", json!("operator")),
            ("scope", json!("administrator calls:admin")),
        ] {
            let p = jwt(&auth, &hs(SECRET, &with(c.clone(), k, v.clone()))).unwrap();
            assert!(!p.admin, "{k}={v} must not grant admin");
            assert_eq!(p.require_admin(), Err(AuthError::Forbidden));
        }
    }

    #[test]
    fn expired_tokens_are_refused_beyond_a_short_leeway() {
        let auth = hs_auth();
        let c = claims("alice");
        let hour_ago = with(c.clone(), "exp", json!(unix_now() - 3600));
        assert_eq!(jwt(&auth, &hs(SECRET, &hour_ago)), Err(AuthError::Expired));
        // jsonwebtoken's default leeway (60 s) would let this one through.
        let two_min_ago = with(c.clone(), "exp", json!(unix_now() - 120));
        assert_eq!(
            jwt(&auth, &hs(SECRET, &two_min_ago)),
            Err(AuthError::Expired)
        );
        let just_now = with(c.clone(), "exp", json!(unix_now() - 5));
        assert!(jwt(&auth, &hs(SECRET, &just_now)).is_ok());
        let not_yet = with(c, "nbf", json!(unix_now() + 3600));
        assert_eq!(jwt(&auth, &hs(SECRET, &not_yet)), Err(AuthError::Expired));
    }

    #[test]
    fn wrong_or_missing_audience_is_refused() {
        let auth = hs_auth();
        let c = claims("alice");
        let other = with(c.clone(), "aud", json!("someone-else"));
        assert_eq!(jwt(&auth, &hs(SECRET, &other)), Err(AuthError::Audience));
        let others = with(c.clone(), "aud", json!(["a", "b"]));
        assert_eq!(jwt(&auth, &hs(SECRET, &others)), Err(AuthError::Audience));
        let none = without(c, "aud");
        assert_eq!(jwt(&auth, &hs(SECRET, &none)), Err(AuthError::Audience));
    }

    #[test]
    fn wrong_secret_is_a_signature_failure() {
        let auth = hs_auth();
        let forged = hs("another-secret-of-sufficient-length!!", &claims("alice"));
        assert_eq!(jwt(&auth, &forged), Err(AuthError::Signature));
        // Tampered claims under the right header and signature.
        let good = hs(SECRET, &claims("alice"));
        let parts: Vec<&str> = good.trim_start_matches("Bearer ").split('.').collect();
        let tampered = format!(
            "Bearer {}.{}.{}",
            parts[0],
            b64(&with(claims("alice"), "admin", json!(true))),
            parts[2]
        );
        assert_eq!(jwt(&auth, &tampered), Err(AuthError::Signature));
    }

    #[test]
    fn missing_and_malformed_credentials() {
        let auth = hs_auth();
        let now = Instant::now();
        assert_eq!(auth.authenticate(None, None, now), Err(AuthError::Missing));
        assert_eq!(
            auth.authenticate(Some("  "), Some(""), now),
            Err(AuthError::Missing)
        );
        for header in [
            "Bearer",
            "Bearer ",
            "Bearer garbage",
            "Bearer a.b.c",
            "Bearer a.b",
            "Bearer !!!.e30.x",
            "Basic xyz",
            "Basic dXNlcjpwYXNz",
            "Token abc.def.ghi",
        ] {
            assert_eq!(jwt(&auth, header), Err(AuthError::Malformed), "{header}");
        }
        // Header not JSON, or without `alg`, or with `crit`.
        let c = b64(&claims("alice"));
        let no_alg = format!("Bearer {}.{c}.sig", b64(&json!({"typ": "JWT"})));
        assert_eq!(jwt(&auth, &no_alg), Err(AuthError::Malformed));
        let crit = format!(
            "Bearer {}.{c}.sig",
            b64(&json!({"alg": "HS256", "crit": ["exp"]}))
        );
        assert_eq!(jwt(&auth, &crit), Err(AuthError::Malformed));
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(jwt(&auth, &huge), Err(AuthError::Malformed));
        // A JWT and an API key at once.
        assert_eq!(
            auth.authenticate(
                Some(&hs(SECRET, &claims("alice"))),
                Some("0123456789abcdef"),
                now
            ),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn missing_exp_or_sub_is_malformed() {
        // Decision: a token without `exp` is not "expired", it is not a token
        // we issue at all, so it is Malformed (as is one without `sub`).
        let auth = hs_auth();
        let c = claims("alice");
        let no_exp = without(c.clone(), "exp");
        assert_eq!(jwt(&auth, &hs(SECRET, &no_exp)), Err(AuthError::Malformed));
        let text_exp = with(c.clone(), "exp", json!("tomorrow"));
        assert_eq!(
            jwt(&auth, &hs(SECRET, &text_exp)),
            Err(AuthError::Malformed)
        );
        let no_sub = without(c.clone(), "sub");
        assert_eq!(jwt(&auth, &hs(SECRET, &no_sub)), Err(AuthError::Malformed));
        let empty_sub = with(c.clone(), "sub", json!(""));
        assert_eq!(
            jwt(&auth, &hs(SECRET, &empty_sub)),
            Err(AuthError::Malformed)
        );
        let long_sub = with(c, "sub", json!("x".repeat(MAX_SUBJECT_LEN + 1)));
        assert_eq!(
            jwt(&auth, &hs(SECRET, &long_sub)),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn alg_none_and_unconfigured_algorithms_are_refused() {
        let c = claims("alice");
        let admin = with(c.clone(), "admin", json!(true));
        for auth in [hs_auth(), rs_auth(PUBLIC_A)] {
            for alg in ["none", "None", "NONE"] {
                let header = b64(&json!({"alg": alg, "typ": "JWT"}));
                let unsigned = format!("Bearer {header}.{}.", b64(&admin));
                assert_eq!(jwt(&auth, &unsigned), Err(AuthError::Algorithm), "{alg}");
                let junk_sig = format!("Bearer {header}.{}.c2ln", b64(&admin));
                assert_eq!(jwt(&auth, &junk_sig), Err(AuthError::Algorithm), "{alg}");
            }
        }
        // HS512 with the right secret: still not an algorithm we accept.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &c,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            jwt(&hs_auth(), &format!("Bearer {hs512}")),
            Err(AuthError::Algorithm)
        );
        // RS256 when only HS256 is configured.
        assert_eq!(jwt(&hs_auth(), &rs(&c)), Err(AuthError::Algorithm));
    }

    #[test]
    fn rs256_valid_and_wrong_key() {
        let auth = rs_auth(PUBLIC_A);
        assert!(auth.configured());
        let c = with(claims("svc-dialer"), "role", json!("admin"));
        assert_eq!(jwt(&auth, &rs(&c)), Ok(user("svc-dialer", true, Via::Jwt)));
        let expired = with(c.clone(), "exp", json!(unix_now() - 3600));
        assert_eq!(jwt(&auth, &rs(&expired)), Err(AuthError::Expired));
        assert_eq!(jwt(&rs_auth(PUBLIC_B), &rs(&c)), Err(AuthError::Signature));
    }

    #[test]
    fn key_confusion_hs256_signed_with_the_public_key_is_refused() {
        let forged = hs(PUBLIC_A, &with(claims("mallory"), "admin", json!(true)));
        assert_eq!(jwt(&rs_auth(PUBLIC_A), &forged), Err(AuthError::Algorithm));
        // The PEM with its surrounding whitespace, as read from a file.
        let forged_nl = hs(&format!("{PUBLIC_A}\n"), &claims("mallory"));
        assert_eq!(
            jwt(&rs_auth(PUBLIC_A), &forged_nl),
            Err(AuthError::Algorithm)
        );
        // With both configured, HS256 is checked with the secret, not the PEM.
        let both = Authenticator::new(&AuthSettings {
            jwt_secret: SECRET.into(),
            jwt_public_key_pem: PUBLIC_A.into(),
            audience: AUD.into(),
            ..AuthSettings::default()
        })
        .unwrap();
        assert_eq!(jwt(&both, &forged), Err(AuthError::Signature));
        assert!(jwt(&both, &rs(&claims("a"))).is_ok());
        assert!(jwt(&both, &hs(SECRET, &claims("b"))).is_ok());
    }

    #[test]
    fn api_keys_valid_unknown_and_admin() {
        let auth = Authenticator::new(&AuthSettings {
            api_keys: vec![
                "ci:0123456789abcdef01".into(),
                " ops.team:fedcba9876543210ff:admin ".into(),
            ],
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(auth.configured());
        assert_eq!(
            key(&auth, "0123456789abcdef01"),
            Ok(user("ci", false, Via::ApiKey))
        );
        assert_eq!(
            key(&auth, " fedcba9876543210ff\t"),
            Ok(user("ops.team", true, Via::ApiKey))
        );
        for wrong in [
            "0123456789abcdef0",
            "0123456789abcdef012",
            "ci:0123456789abcdef01",
            "FEDCBA9876543210FF",
        ] {
            assert_eq!(key(&auth, wrong), Err(AuthError::UnknownKey), "{wrong}");
        }
        // No JWT configured: any bearer token names an algorithm we do not take.
        assert_eq!(
            jwt(&auth, &hs(SECRET, &claims("alice"))),
            Err(AuthError::Algorithm)
        );
        // Only digests are kept.
        assert!(!format!("{auth:?}").contains("0123456789abcdef01"));
    }

    #[test]
    fn rate_limit_trips_per_principal_and_refills() {
        let auth = Authenticator::new(&AuthSettings {
            jwt_secret: SECRET.into(),
            audience: AUD.into(),
            api_keys: vec!["a:aaaaaaaaaaaaaaaa".into(), "b:bbbbbbbbbbbbbbbb".into()],
            rate_per_minute: 3,
            ..AuthSettings::default()
        })
        .unwrap();
        let t0 = Instant::now();
        let a = |t| auth.authenticate(None, Some("aaaaaaaaaaaaaaaa"), t);
        for _ in 0..3 {
            assert!(a(t0).is_ok());
        }
        match a(t0) {
            Err(AuthError::RateLimited { retry_after_secs }) => {
                assert!(retry_after_secs >= 1);
                assert_eq!(retry_after_secs, 20);
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
        assert_eq!(a(t0).unwrap_err().status(), 429);
        // Another principal, and a JWT subject spelled like the key name, are unaffected.
        assert!(
            auth.authenticate(None, Some("bbbbbbbbbbbbbbbb"), t0)
                .is_ok()
        );
        assert!(
            auth.authenticate(Some(&hs(SECRET, &claims("a"))), None, t0)
                .is_ok()
        );
        // Bad credentials do not count against anyone (nor get limited).
        assert_eq!(
            auth.authenticate(None, Some("cccccccccccccccc"), t0),
            Err(AuthError::UnknownKey)
        );
        // 20 s refill one token at 3/min.
        let t20 = t0 + Duration::from_secs(20);
        assert!(a(t20).is_ok());
        assert!(matches!(a(t20), Err(AuthError::RateLimited { .. })));
        // An earlier instant (racing threads) neither refills nor panics.
        assert!(matches!(a(t0), Err(AuthError::RateLimited { .. })));
        // A JWT subject hammering.
        let bob = hs(SECRET, &claims("bob"));
        for _ in 0..3 {
            assert!(auth.authenticate(Some(&bob), None, t0).is_ok());
        }
        assert!(matches!(
            auth.authenticate(Some(&bob), None, t0),
            Err(AuthError::RateLimited { .. })
        ));
        // A full minute restores the whole bucket, no more.
        let t80 = t20 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(a(t80).is_ok());
        }
        assert!(a(t80).is_err());
    }

    #[test]
    fn zero_rate_disables_the_limit() {
        let auth = Authenticator::new(&AuthSettings {
            api_keys: vec!["a:aaaaaaaaaaaaaaaa".into()],
            rate_per_minute: 0,
            ..AuthSettings::default()
        })
        .unwrap();
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(
                auth.authenticate(None, Some("aaaaaaaaaaaaaaaa"), t0)
                    .is_ok()
            );
        }
    }

    #[test]
    fn rate_limiter_memory_is_bounded_least_recently_seen_first() {
        let mut limiter = RateLimiter::new(1, 3);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(limiter.check(Via::ApiKey, name, at(i as u64)).is_ok());
        }
        // d pushes out a, the least recently seen.
        assert!(limiter.check(Via::ApiKey, "d", at(3)).is_ok());
        assert_eq!(limiter.buckets.len(), 3);
        assert!(!limiter.buckets.contains(&(Via::ApiKey, "a".into())));
        // c is still remembered (and still limited).
        assert!(limiter.check(Via::ApiKey, "c", at(4)).is_err());
        // Idle for over a minute: all dropped at once, not just one.
        assert!(limiter.check(Via::Jwt, "e", at(200)).is_ok());
        assert_eq!(limiter.buckets.len(), 1);
        for i in 0..100 {
            let _ = limiter.check(Via::Jwt, &format!("p{i}"), at(201));
            assert!(limiter.buckets.len() <= 3);
        }
    }

    #[test]
    fn config_errors_name_the_setting_and_never_the_secret() {
        let err = |s: AuthSettings| Authenticator::new(&s).unwrap_err();
        let check = |e: AuthConfigError, setting: &str, secret: &str| {
            let text = e.to_string();
            assert!(text.contains(setting), "{text:?} should name {setting}");
            assert!(!text.contains(secret), "{text:?} leaks {secret:?}");
            let debug = format!("{e:?}");
            assert!(!debug.contains(secret), "{debug:?} leaks {secret:?}");
        };
        let bad_pem =
            "-----BEGIN PUBLIC KEY-----\nnotbase64secretstuff!!\n-----END PUBLIC KEY-----";
        check(
            err(AuthSettings {
                jwt_public_key_pem: bad_pem.into(),
                audience: AUD.into(),
                ..AuthSettings::default()
            }),
            "api.jwt_public_key",
            "notbase64secretstuff",
        );
        check(
            err(AuthSettings {
                jwt_public_key_pem: "just some text".into(),
                audience: AUD.into(),
                ..AuthSettings::default()
            }),
            "api.jwt_public_key",
            "just some text",
        );
        // The private key where the public one belongs.
        let e = err(AuthSettings {
            jwt_public_key_pem: PRIVATE_A.into(),
            audience: AUD.into(),
            ..AuthSettings::default()
        });
        check(e, "api.jwt_public_key", &PRIVATE_A[40..80]);
        for (entry, secret) in [
            ("name-only", "name-only"),
            ("svc:short-key-123", "short-key-123"),
            ("svc:0123456789abcdef:root", "0123456789abcdef"),
            (":0123456789abcdef", "0123456789abcdef"),
            ("bad name:0123456789abcdef", "0123456789abcdef"),
            ("svc:0123456789 abcdef", "0123456789 abcdef"),
        ] {
            let e = err(AuthSettings {
                api_keys: vec!["ok:zzzzzzzzzzzzzzzz".into(), entry.into()],
                ..AuthSettings::default()
            });
            assert!(matches!(e, AuthConfigError::ApiKeyEntry { index: 2, .. }));
            check(e, "api.api_keys", secret);
        }
        let dup_name = err(AuthSettings {
            api_keys: vec!["x:aaaaaaaaaaaaaaaa".into(), "x:bbbbbbbbbbbbbbbb".into()],
            ..AuthSettings::default()
        });
        assert_eq!(
            dup_name,
            AuthConfigError::DuplicateApiKeyName { index: 2, first: 1 }
        );
        check(dup_name, "api.api_keys", "bbbbbbbbbbbbbbbb");
        let dup_key = err(AuthSettings {
            api_keys: vec!["x:aaaaaaaaaaaaaaaa".into(), "y:aaaaaaaaaaaaaaaa".into()],
            ..AuthSettings::default()
        });
        assert_eq!(
            dup_key,
            AuthConfigError::DuplicateApiKey { index: 2, first: 1 }
        );
        check(dup_key, "api.api_keys", "aaaaaaaaaaaaaaaa");
        check(
            err(AuthSettings {
                jwt_secret: "too-short-secret".into(),
                audience: AUD.into(),
                ..AuthSettings::default()
            }),
            "api.jwt_secret",
            "too-short-secret",
        );
        check(
            err(AuthSettings {
                jwt_secret: SECRET.into(),
                audience: " ".into(),
                ..AuthSettings::default()
            }),
            "api.jwt_audience",
            SECRET,
        );
    }

    #[test]
    fn nothing_configured_means_closed() {
        let auth = Authenticator::new(&AuthSettings {
            audience: AUD.into(),
            rate_per_minute: 10,
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(!auth.configured());
        let now = Instant::now();
        for result in [
            auth.authenticate(None, None, now),
            auth.authenticate(Some(&hs(SECRET, &claims("a"))), None, now),
            auth.authenticate(None, Some("0123456789abcdef"), now),
        ] {
            assert_eq!(result.unwrap_err().status(), 401);
        }
    }

    #[test]
    fn statuses_and_labels() {
        use AuthError::*;
        let all = [
            (Missing, 401, "missing"),
            (Malformed, 401, "malformed"),
            (Expired, 401, "expired"),
            (Audience, 401, "audience"),
            (Signature, 401, "signature"),
            (Algorithm, 401, "algorithm"),
            (UnknownKey, 401, "unknown_key"),
            (Forbidden, 403, "forbidden"),
            (
                RateLimited {
                    retry_after_secs: 7,
                },
                429,
                "rate_limited",
            ),
        ];
        for (e, status, label) in all {
            assert_eq!(e.status(), status, "{e:?}");
            assert_eq!(e.label(), label, "{e:?}");
        }
        assert!(
            RateLimited {
                retry_after_secs: 7
            }
            .to_string()
            .contains('7')
        );
    }

    #[test]
    fn authenticator_is_shareable_and_its_debug_is_secret_free() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Authenticator>();
        let s = AuthSettings {
            jwt_secret: SECRET.into(),
            audience: AUD.into(),
            api_keys: vec!["ci:0123456789abcdef01".into()],
            ..AuthSettings::default()
        };
        let auth = Authenticator::new(&s).unwrap();
        for text in [format!("{s:?}"), format!("{auth:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("0123456789abcdef01"), "{text}");
        }
    }

    #[test]
    fn constant_time_compare() {
        let a = sha256("x");
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[31] ^= 1;
        assert!(!ct_eq(&a, &b));
    }
}
