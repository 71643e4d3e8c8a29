//! Who is calling the app-facing and admin APIs: a bearer token (JWT verified
//! against configured keys, with issuer and audience) or a service's client
//! certificate. A tower layer authenticates every call and puts the
//! [`Principal`] into the request; what it may do is decided in
//! `service/authz.rs`, in one place.
//!
//! Scopes (space-separated in the token's `scope` claim, or configured per
//! service certificate):
//! - `vehicles:read` — read and watch vehicles;
//! - `vehicles:control` — write and cancel any field;
//! - `control:<capability>` — write and cancel fields of one capability only
//!   (`control:climate` may not unlock doors);
//! - `vehicle:<id>`, `fleet:<prefix>` — if any is present, only those vehicles;
//! - `admin:read` — node introspection;
//! - `audit:read` — vehicles' audit trails (within the vehicle/fleet limits).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::tls::PeerIdentity;

/// What a caller may do, parsed from its scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// `vehicles:read`.
    pub read: bool,
    /// `vehicles:control`.
    pub control: bool,
    /// `control:<capability>`.
    pub capabilities: HashSet<String>,
    /// `vehicle:<id>`.
    pub vehicles: HashSet<String>,
    /// `fleet:<prefix>`.
    pub fleets: Vec<String>,
    /// `admin:read`.
    pub admin: bool,
    /// `audit:read`.
    pub audit: bool,
}

impl Scopes {
    /// Everything (the open development mode: plaintext on loopback, no keys).
    pub fn all() -> Self {
        Scopes { read: true, control: true, admin: true, audit: true, ..Scopes::default() }
    }

    /// Parses space-separated scopes; unknown ones are ignored.
    pub fn parse(text: &str) -> Self {
        let mut s = Scopes::default();
        for scope in text.split_whitespace() {
            match scope {
                "vehicles:read" => s.read = true,
                "vehicles:control" => s.control = true,
                "admin:read" => s.admin = true,
                "audit:read" => s.audit = true,
                _ => {
                    if let Some(cap) = scope.strip_prefix("control:") {
                        s.capabilities.insert(cap.to_string());
                    } else if let Some(id) = scope.strip_prefix("vehicle:") {
                        s.vehicles.insert(id.to_string());
                    } else if let Some(prefix) = scope.strip_prefix("fleet:") {
                        s.fleets.push(prefix.to_string());
                    }
                }
            }
        }
        s
    }

    /// Whether `vehicle` is within the vehicle and fleet limits.
    pub fn covers_vehicle(&self, vehicle: &str) -> bool {
        (self.vehicles.is_empty() && self.fleets.is_empty())
            || self.vehicles.contains(vehicle)
            || self.fleets.iter().any(|p| vehicle.starts_with(p.as_str()))
    }

    /// Whether fields of `capability` may be written.
    pub fn controls(&self, capability: &str) -> bool {
        self.control || self.capabilities.contains(capability)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who (the token's `sub`, `service:<name>`, or `anonymous`).
    pub subject: Arc<str>,
    /// What it may do.
    pub scopes: Scopes,
    /// When its credentials expire (a watch ends then).
    pub expires_at: Option<SystemTime>,
}

/// Why a call is not authenticated. The message tells the caller what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token and no service certificate.
    #[error("missing credentials: send `authorization: Bearer <token>` or connect with a service certificate")]
    Missing,
    /// No token, and the connection's client certificate is no declared
    /// service's.
    #[error(
        "missing credentials: this connection's client certificate is not a declared service's ({0}); send `authorization: Bearer <token>`"
    )]
    NotAService(String),
    /// The token is not a well-formed bearer JWT.
    #[error("malformed bearer token")]
    Malformed,
    /// The token names a key that is not configured.
    #[error("token signed with unknown key id {0:?}")]
    UnknownKey(String),
    /// The token did not verify (signature, algorithm, audience, issuer, expiry).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Tokens are sent but none are accepted here.
    #[error("this server accepts no tokens (no --jwks configured)")]
    TokensNotConfigured,
}

/// Why the authentication settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct AuthConfigError {
    path: String,
    reason: String,
}

/// Token verification keys (from a JWKS file) and their checks.
struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    issuer: String,
    audience: String,
}

/// Authenticates calls.
pub struct Authenticator {
    keys: Option<Keys>,
    services: HashMap<String, Scopes>,
    open: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.as_ref().map(|k| k.by_kid.len()))
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("open", &self.open)
            .finish()
    }
}

/// Algorithms accepted in tokens: asymmetric only (never `none` or HMAC).
const ALGORITHMS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256];

impl Authenticator {
    /// Everyone is `anonymous` with every scope: the development mode,
    /// used only without TLS (which tetherd serves on loopback only) and
    /// without keys.
    pub fn open() -> Self {
        Authenticator { keys: None, services: HashMap::new(), open: true }
    }

    /// Checks tokens against the keys of `jwks` (a JWKS JSON file; each key
    /// needs a `kid` and an `alg` of ES256, EdDSA or RS256), and accepts
    /// service certificates named in `services`.
    pub fn new(jwks: Option<(&Path, &str, &str)>, services: HashMap<String, Scopes>) -> Result<Self, AuthConfigError> {
        let keys = match jwks {
            None => None,
            Some((path, issuer, audience)) => {
                Some(Keys { by_kid: load_jwks(path)?, issuer: issuer.to_string(), audience: audience.to_string() })
            }
        };
        Ok(Authenticator { keys, services, open: false })
    }

    /// Authenticates one call from its headers and its connection's identity.
    pub fn authenticate(&self, headers: &HeaderMap, peer: Option<&PeerIdentity>) -> Result<Principal, AuthError> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .ok_or(AuthError::Malformed)?;
            return self.verify(token.trim());
        }
        // A certificate is a service's only when it names exactly one
        // declared service by the identity rule (see `tls::identity`).
        let service = peer.and_then(|p| p.name().and_then(|name| self.services.get(name).map(|s| (name, s, p))));
        if let Some((name, scopes, peer)) = service {
            return Ok(Principal {
                subject: format!("service:{name}").into(),
                scopes: scopes.clone(),
                expires_at: Some(peer.not_after),
            });
        }
        if self.open {
            return Ok(Principal { subject: "anonymous".into(), scopes: Scopes::all(), expires_at: None });
        }
        Err(match peer.map(|p| &p.name) {
            None => AuthError::Missing,
            Some(Ok(name)) => AuthError::NotAService(format!("it names {name:?}")),
            Some(Err(why)) => AuthError::NotAService(why.to_string()),
        })
    }

    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let keys = self.keys.as_ref().ok_or(AuthError::TokensNotConfigured)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("the token has no key id (kid)".into()))?;
        let (key, alg) = keys.by_kid.get(&kid).ok_or_else(|| AuthError::UnknownKey(kid.clone()))?;
        let mut validation = Validation::new(*alg);
        validation.set_issuer(&[&keys.issuer]);
        validation.set_audience(&[&keys.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.leeway = LEEWAY_SECS;
        // `nbf` is checked when present, with the same leeway as `exp`.
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(describe(e.kind())))?;
        let claims = data.claims;
        // A token issued in the future (beyond the clock skew allowed) was
        // minted by a wrong clock or for later use: refused like `nbf`.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS) {
            return Err(AuthError::Invalid("the token is issued in the future (iat)".into()));
        }
        Ok(Principal {
            subject: claims.sub.into(),
            scopes: Scopes::parse(&claims.scope),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
        })
    }
}

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    scope: String,
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "the token expired".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidSignature => "bad signature".into(),
        K::ImmatureSignature => "the token is not valid yet".into(),
        K::InvalidAlgorithm => "the algorithm does not match the key".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        other => format!("{other:?}"),
    }
}

fn load_jwks(path: &Path) -> Result<HashMap<String, (DecodingKey, Algorithm)>, AuthConfigError> {
    let err = |reason: String| AuthConfigError { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| err(format!("not a JWKS: {e}")))?;
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().ok_or_else(|| err("every key needs a kid".into()))?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            .filter(|a| ALGORITHMS.contains(a))
            .ok_or_else(|| err(format!("key {kid:?} needs an alg of ES256, EdDSA or RS256")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {kid:?}: {e}")))?;
        out.insert(kid, (key, alg));
    }
    if out.is_empty() {
        return Err(err("no keys".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_limit() {
        let s = Scopes::parse("vehicles:read control:climate fleet:eu- vehicle:us-7 bogus");
        assert!(s.read && !s.control && !s.admin);
        assert!(s.controls("climate") && !s.controls("doors"));
        assert!(s.covers_vehicle("eu-1") && s.covers_vehicle("us-7") && !s.covers_vehicle("us-8"));
        assert!(Scopes::parse("vehicles:control").covers_vehicle("anything"));
    }
}

/// The tower layer: authenticates every call to the app-facing and admin
/// services (vehicles authenticate by certificate in their session) and puts
/// the [`Principal`] into the request, or answers UNAUTHENTICATED.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> Authenticate<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, auth: Arc<Authenticator>) -> Self {
        Authenticate { inner, auth }
    }
}

/// gRPC path prefixes that need an authenticated principal.
const PROTECTED: [&str; 2] = ["/tether.app.v1.", "/tether.admin.v1."];

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<tonic::body::Body>, std::convert::Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if !PROTECTED.iter().any(|p| path.starts_with(p)) {
            return futures::future::Either::Left(self.inner.call(req));
        }
        let peer = req.extensions().get::<Arc<PeerIdentity>>().cloned();
        match self.auth.authenticate(req.headers(), peer.as_deref()) {
            Ok(principal) => {
                req.extensions_mut().insert(Arc::new(principal));
                futures::future::Either::Left(self.inner.call(req))
            }
            Err(e) => {
                tracing::info!(path, error = %e, "unauthenticated call refused");
                let status = tonic::Status::unauthenticated(e.to_string());
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
