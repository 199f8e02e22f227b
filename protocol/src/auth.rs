//! Authentication exchanges, both directions, without I/O.
//!
//! * [`ScramVerifier`] + [`ScramServer`]: the server side of SCRAM-SHA-256 (RFC 5802/7677 as
//!   PostgreSQL uses it, without channel binding). A successful exchange yields the client's
//!   `ClientKey`, which lets pgsplit log in to the backend as that user without knowing the
//!   password ("SCRAM pass-through").
//! * [`ScramClient`]: the client side, with a password or with recovered keys.
//! * md5: [`md5_secret`] and [`md5_response`].
//!
//! Nonces are passed in so that exchanges can be replayed in tests.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest as _, Md5};
use rand::Rng;
use sha2::Sha256;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Iterations used when pgsplit derives a verifier from a plain password (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// A server asking for more iterations than this is refused (denial-of-service guard).
pub const MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding is not supported")]
    ChannelBinding,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("password authentication failed")]
    WrongPassword,
    #[error("server signature does not match: the server does not know this user's password")]
    ServerSignature,
    #[error("invalid SCRAM verifier")]
    BadVerifier,
    #[error("server uses different SCRAM parameters than the stored verifier")]
    ParameterMismatch,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(data).into()
}

/// PBKDF2-HMAC-SHA-256 with one output block ("Hi" in RFC 5802).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = Vec::with_capacity(salt.len() + 4);
    first.extend_from_slice(salt);
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// SASLprep as PostgreSQL applies it: when the password cannot be prepared, use its bytes.
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut o = [0u8; 32];
    for i in 0..32 {
        o[i] = a[i] ^ b[i];
    }
    o
}

/// A random printable nonce (base64 of 18 random bytes).
pub fn random_nonce() -> String {
    let mut b = [0u8; 18];
    rand::rng().fill_bytes(&mut b);
    B64.encode(b)
}

/// A stored SCRAM-SHA-256 secret: `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(AuthError::BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(AuthError::BadVerifier)?;
        let (iter, salt) = params.split_once(':').ok_or(AuthError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(AuthError::BadVerifier)?;
        let key = |k: &str| -> Result<[u8; 32], AuthError> {
            B64.decode(k).ok().and_then(|v| v.try_into().ok()).ok_or(AuthError::BadVerifier)
        };
        Ok(ScramVerifier {
            iterations: iter.parse().ok().filter(|&i| i > 0).ok_or(AuthError::BadVerifier)?,
            salt: B64.decode(salt).map_err(|_| AuthError::BadVerifier)?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// Derives a verifier from a plain password (costly: `iterations` HMACs).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hi(&normalize(password), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// A verifier with a fresh random salt.
    pub fn generate(password: &str) -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Self::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// Splits `k=v` attributes of a SCRAM message.
fn attr(part: Option<&str>, key: char) -> Result<&str, AuthError> {
    let p = part.ok_or(AuthError::Malformed("missing attribute"))?;
    let mut it = p.chars();
    if it.next() != Some(key) || it.next() != Some('=') {
        return Err(AuthError::Malformed("unexpected attribute"));
    }
    Ok(&p[2..])
}

fn printable_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The server side of one SCRAM-SHA-256 exchange.
#[derive(Debug)]
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    state: ServerState,
}

#[derive(Debug)]
enum ServerState {
    Initial,
    SentFirst { client_first_bare: String, server_first: String, nonce: String, gs2: String },
    Done,
}

/// What a successful exchange proves and returns.
#[derive(Debug, Clone)]
pub struct ScramOutcome {
    /// The `server-final-message` to send in AuthenticationSASLFinal.
    pub server_final: String,
    /// The client's ClientKey, usable for [`ScramCredential::Keys`].
    pub client_key: [u8; 32],
}

impl ScramServer {
    pub fn new(verifier: ScramVerifier, server_nonce: String) -> Self {
        ScramServer { verifier, server_nonce, state: ServerState::Initial }
    }

    /// Takes the `client-first-message` (from SASLInitialResponse) and returns `server-first-message`.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, AuthError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(AuthError::Malformed("unexpected client-first-message"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg.split_once(',').ok_or(AuthError::Malformed("no gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(AuthError::ChannelBinding),
            _ => return Err(AuthError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(AuthError::Malformed("no gs2 header"))?;
        if !authzid.is_empty() {
            return Err(AuthError::Malformed("authorization identities are not supported"));
        }
        let gs2 = format!("{flag},{authzid},");
        let mut parts = bare.split(',');
        let first = parts.next();
        if first.is_some_and(|p| p.starts_with("m=")) {
            return Err(AuthError::Malformed("mandatory extensions are not supported"));
        }
        attr(first, 'n')?; // PostgreSQL ignores the SCRAM user name; the startup user counts.
        let client_nonce = attr(parts.next(), 'r')?;
        if !printable_nonce(client_nonce) {
            return Err(AuthError::Malformed("bad nonce"));
        }
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&self.verifier.salt), self.verifier.iterations);
        self.state = ServerState::SentFirst {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            gs2,
        };
        Ok(server_first)
    }

    /// Takes the `client-final-message` and, if the proof holds, returns the server's final
    /// message and the recovered ClientKey.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<ScramOutcome, AuthError> {
        let ServerState::SentFirst { client_first_bare, server_first, nonce, gs2 } =
            std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(AuthError::Malformed("unexpected client-final-message"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(AuthError::Malformed("no proof"))?;
        let mut parts = without_proof.split(',');
        let cbind = attr(parts.next(), 'c')?;
        if B64.decode(cbind).ok().as_deref() != Some(gs2.as_bytes()) {
            return Err(AuthError::ChannelBinding);
        }
        if attr(parts.next(), 'r')? != nonce {
            return Err(AuthError::Nonce);
        }
        let proof: [u8; 32] =
            B64.decode(proof).ok().and_then(|p| p.try_into().ok()).ok_or(AuthError::Malformed("bad proof"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if sha256(&client_key) != self.verifier.stored_key {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(ScramOutcome { server_final: format!("v={}", B64.encode(server_signature)), client_key })
    }
}

/// What pgsplit knows to log in to a backend with SCRAM.
#[derive(Clone, PartialEq, Eq)]
pub enum ScramCredential {
    Password(String),
    /// Keys recovered from a client's exchange against the same verifier the server holds.
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
        salt: Vec<u8>,
        iterations: u32,
    },
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScramCredential::Password(_) => "Password(..)",
            ScramCredential::Keys { .. } => "Keys(..)",
        })
    }
}

/// The client side of one SCRAM-SHA-256 exchange.
#[derive(Debug)]
pub struct ScramClient {
    credential: ScramCredential,
    client_nonce: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    pub fn new(credential: ScramCredential, client_nonce: String) -> Self {
        ScramClient { credential, client_nonce, server_signature: None }
    }

    fn client_first_bare(&self) -> String {
        format!("n=,r={}", self.client_nonce)
    }

    /// The `client-first-message` for SASLInitialResponse.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare())
    }

    /// Takes `server-first-message`, returns `client-final-message`.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<String, AuthError> {
        let msg = std::str::from_utf8(msg).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let mut parts = msg.split(',');
        let nonce = attr(parts.next(), 'r')?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(AuthError::Nonce);
        }
        let salt = B64.decode(attr(parts.next(), 's')?).map_err(|_| AuthError::Malformed("bad salt"))?;
        let iterations: u32 =
            attr(parts.next(), 'i')?.parse().map_err(|_| AuthError::Malformed("bad iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(AuthError::Malformed("iteration count out of range"));
        }
        let (client_key, server_key) = match &self.credential {
            ScramCredential::Password(p) => {
                let salted = hi(&normalize(p), &salt, iterations);
                (hmac(&salted, b"Client Key"), hmac(&salted, b"Server Key"))
            }
            ScramCredential::Keys { client_key, server_key, salt: s, iterations: i } => {
                if *s != salt || *i != iterations {
                    return Err(AuthError::ParameterMismatch);
                }
                (*client_key, *server_key)
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.client_first_bare());
        let stored_key = sha256(&client_key);
        let proof = xor(&client_key, &hmac(&stored_key, auth_message.as_bytes()));
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks `server-final-message`.
    pub fn server_final(&self, msg: &[u8]) -> Result<(), AuthError> {
        let msg = std::str::from_utf8(msg).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        if msg.starts_with("e=") {
            return Err(AuthError::WrongPassword);
        }
        let sig = B64.decode(attr(Some(msg), 'v')?).map_err(|_| AuthError::Malformed("bad signature"))?;
        match self.server_signature {
            Some(expected) if sig == expected => Ok(()),
            _ => Err(AuthError::ServerSignature),
        }
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The md5 secret PostgreSQL stores: `"md5" + md5(password || user)`.
pub fn md5_secret(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// The PasswordMessage answering AuthenticationMD5Password, from a stored md5 secret.
pub fn md5_response(secret: &str, salt: [u8; 4]) -> String {
    let inner = secret.strip_prefix("md5").unwrap_or(secret);
    format!("md5{}", md5_hex(&[inner.as_bytes(), &salt]))
}

/// Constant-time comparison of two byte strings.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
