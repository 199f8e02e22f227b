//! Client authentication: SCRAM-SHA-256, md5 or trust for listed users; for unlisted users,
//! the secret the primary itself holds (`auth_query`) or trust. The outcome includes how the
//! session's backend connections log in: the configured password, the stored md5 secret, or
//! the SCRAM keys recovered from the client's own proof.

use std::sync::Arc;

use bytes::BytesMut;
use pgsplit_protocol::auth::{
    constant_time_eq, md5_response, random_nonce, ScramCredential, ScramServer, ScramVerifier, SCRAM_SHA_256,
};
use pgsplit_protocol::backend::Authentication;
use pgsplit_protocol::frontend::AuthExpect;
use pgsplit_protocol::{BackendMessage, FrontendMessage};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};

use super::io::ClientIo;
use crate::config::{AuthMethod, BackendCredential, ClientSecret, Unlisted, UserAuth};
use crate::context::Context;
use crate::error::Error;
use crate::pool::{checkout, Credential, PoolKey};

/// A logged-in user.
pub struct Authenticated {
    pub credential: Credential,
    pub user: Option<Arc<UserAuth>>,
}

/// What the client must prove.
enum Challenge {
    None,
    Scram(ScramVerifier),
    Md5(String),
    /// Unknown user: run a SCRAM exchange against a random verifier and fail it, so that the
    /// answer does not reveal whether the user exists.
    Refuse,
}

pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut ClientIo<S>,
    ctx: &Context,
    user: &str,
    database: &str,
) -> Result<Authenticated, Error> {
    let auth = &ctx.settings().auth;
    let (challenge, listed, configured): (Challenge, Option<Arc<UserAuth>>, Credential) = match auth.users.get(user) {
        Some(u) => {
            let c = match u.method {
                AuthMethod::Trust => Challenge::None,
                AuthMethod::ScramSha256 => match u.scram_verifier() {
                    Some(v) => Challenge::Scram(v.clone()),
                    None => Challenge::Md5(u.md5_secret().unwrap_or_default()),
                },
                // md5 with only a SCRAM verifier stored falls back to SCRAM, as PostgreSQL does.
                AuthMethod::Md5 => match u.md5_secret() {
                    Some(s) => Challenge::Md5(s),
                    None => {
                        Challenge::Scram(u.scram_verifier().cloned().ok_or_else(|| Error::AuthFailed(user.into()))?)
                    }
                },
            };
            let cred = match &u.backend {
                BackendCredential::None => Credential::None,
                BackendCredential::Password(p) => Credential::Password(p.clone()),
                BackendCredential::Md5(s) => Credential::Md5(s.clone()),
            };
            (c, Some(u.clone()), cred)
        }
        None => match &auth.unlisted {
            Unlisted::Reject => (Challenge::Refuse, None, Credential::None),
            Unlisted::Trust => (Challenge::None, None, Credential::None),
            Unlisted::AuthQuery { .. } => {
                let secret = lookup_secret(ctx, user, database).await?;
                let c = match secret {
                    Some(ClientSecret::Scram(v)) => Challenge::Scram(v),
                    Some(ClientSecret::Md5(s)) => Challenge::Md5(s),
                    Some(ClientSecret::Plain { scram, .. }) => Challenge::Scram(scram),
                    _ => Challenge::Refuse,
                };
                (c, None, Credential::None)
            }
        },
    };

    let credential = match challenge {
        Challenge::None => configured,
        Challenge::Refuse => {
            let _ = scram_exchange(io, ScramVerifier::generate(&random_nonce())).await;
            return Err(Error::AuthFailed(user.into()));
        }
        Challenge::Scram(verifier) => {
            let client_key = scram_exchange(io, verifier.clone()).await.map_err(|e| match e {
                Error::ClientGone | Error::ClientIo(_) => e,
                _ => Error::AuthFailed(user.into()),
            })?;
            match configured {
                Credential::None => Credential::Scram(ScramCredential::Keys {
                    client_key,
                    server_key: verifier.server_key,
                    salt: verifier.salt.clone(),
                    iterations: verifier.iterations,
                }),
                other => other,
            }
        }
        Challenge::Md5(secret) => {
            let mut salt = [0u8; 4];
            rand::rng().fill_bytes(&mut salt);
            send_auth(io, Authentication::Md5Password { salt }).await?;
            let f = io.read_frame().await?;
            let FrontendMessage::PasswordMessage { password } = expect_password(f.tag, &f.body, AuthExpect::Password)?
            else {
                return Err(Error::AuthFailed(user.into()));
            };
            if !constant_time_eq(password.as_bytes(), md5_response(&secret, salt).as_bytes()) {
                return Err(Error::AuthFailed(user.into()));
            }
            match configured {
                Credential::None => Credential::Md5(secret),
                other => other,
            }
        }
    };
    send_auth(io, Authentication::Ok).await?;
    Ok(Authenticated { credential, user: listed })
}

async fn send_auth<S: AsyncRead + AsyncWrite + Unpin>(io: &mut ClientIo<S>, a: Authentication) -> Result<(), Error> {
    BackendMessage::Authentication(a).encode(&mut io.wbuf);
    io.flush().await
}

fn expect_password(tag: u8, body: &[u8], expect: AuthExpect) -> Result<FrontendMessage, Error> {
    if tag != b'p' {
        return Err(Error::ClientProtocol(pgsplit_protocol::ProtocolError::Invalid("expected a password message")));
    }
    FrontendMessage::decode_auth(body, expect).map_err(Error::ClientProtocol)
}

/// Runs the server side of SCRAM-SHA-256; returns the client's ClientKey on success.
async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut ClientIo<S>,
    verifier: ScramVerifier,
) -> Result<[u8; 32], Error> {
    let fail = || Error::AuthFailed(String::new());
    send_auth(io, Authentication::Sasl { mechanisms: vec![SCRAM_SHA_256.into()] }).await?;
    let f = io.read_frame().await?;
    let FrontendMessage::SaslInitialResponse { mechanism, data } =
        expect_password(f.tag, &f.body, AuthExpect::SaslInitial)?
    else {
        return Err(fail());
    };
    if mechanism != SCRAM_SHA_256 {
        return Err(fail());
    }
    let mut server = ScramServer::new(verifier, random_nonce());
    let first = server.client_first(&data.unwrap_or_default()).map_err(|_| fail())?;
    send_auth(io, Authentication::SaslContinue { data: first.into_bytes().into() }).await?;
    let f = io.read_frame().await?;
    let FrontendMessage::SaslResponse { data } = expect_password(f.tag, &f.body, AuthExpect::SaslContinue)? else {
        return Err(fail());
    };
    let outcome = server.client_final(&data).map_err(|_| fail())?;
    let mut out = BytesMut::new();
    BackendMessage::Authentication(Authentication::SaslFinal { data: outcome.server_final.into_bytes().into() })
        .encode(&mut out);
    io.wbuf.extend_from_slice(&out);
    Ok(outcome.client_key)
}

/// Asks the primary for a user's secret with `auth_query`.
async fn lookup_secret(ctx: &Context, user: &str, database: &str) -> Result<Option<ClientSecret>, Error> {
    let Unlisted::AuthQuery { user: auth_user, password, database: auth_db, query } = &ctx.settings().auth.unlisted
    else {
        return Ok(None);
    };
    let failed = |reason: String| Error::AuthQuery { user: user.into(), reason };
    let key = PoolKey {
        node: ctx.settings().primary.clone(),
        user: auth_user.clone(),
        database: auth_db.clone().unwrap_or_else(|| database.to_owned()),
    };
    let pool = ctx.pools.get(&key, 2, &Credential::Password(password.clone()));
    let mut conn = checkout(&pool).await.map_err(|e| failed(e.to_string()))?;
    let sql = query.replace("$1", &crate::router::quote_literal(user));
    let rows = conn.query_rows(&sql).await.map_err(|e| failed(e.to_string()))?;
    let secret = rows.into_iter().next().and_then(|r| r.into_iter().nth(1).flatten());
    match secret {
        None => Ok(None),
        Some(s) => ClientSecret::parse(&s).map(Some).map_err(failed),
    }
}
