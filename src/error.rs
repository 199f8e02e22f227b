//! The one place where internal errors become what a client sees: SQLSTATE, severity and a
//! message that is safe to show (no addresses of internal hosts beyond what helps an operator,
//! no secrets).

use pgsplit_protocol::{ErrorResponse, ProtocolError, SqlState};

use crate::pool::PoolError;

/// Everything that can end a client's request or session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client sent an invalid message: {0}")]
    ClientProtocol(#[source] ProtocolError),
    #[error("client connection: {0}")]
    ClientIo(#[source] std::io::Error),
    #[error("client went away")]
    ClientGone,
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("looking up user \"{user}\" failed: {reason}")]
    AuthQuery { user: String, reason: String },
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error("SSL connection is required")]
    TlsRequired,
    #[error("sorry, too many clients already")]
    TooManyClients,
    #[error("client did not finish startup in time")]
    StartupTimeout,
    #[error("pgsplit is shutting down")]
    Shutdown,
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("lost the backend connection")]
    BackendLost,
    #[error("no primary available: {0}")]
    NoPrimary(String),
    #[error("user \"{0}\" is not allowed to use the admin console")]
    NotAdmin(String),
}

impl Error {
    /// What the client is told, or `None` when there is nobody to tell.
    pub fn response(&self) -> Option<ErrorResponse> {
        use Error::*;
        let (fatal, code, message) = match self {
            ClientIo(_) | ClientGone => return None,
            ClientProtocol(e) => (true, SqlState::PROTOCOL_VIOLATION, format!("invalid frontend message: {e}")),
            NoUser => (true, SqlState::INVALID_AUTHORIZATION_SPECIFICATION, self.to_string()),
            AuthFailed(_) => (true, SqlState::INVALID_PASSWORD, self.to_string()),
            AuthQuery { user, .. } => {
                (true, SqlState::INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""))
            }
            UnknownDatabase(_) => (true, SqlState::INVALID_CATALOG_NAME, self.to_string()),
            TlsRequired => (true, SqlState::INVALID_AUTHORIZATION_SPECIFICATION, self.to_string()),
            TooManyClients => (true, SqlState::TOO_MANY_CONNECTIONS, self.to_string()),
            StartupTimeout => (
                true,
                SqlState::PROTOCOL_VIOLATION,
                "timeout while waiting for the startup packet and authentication".into(),
            ),
            Shutdown => (true, SqlState::ADMIN_SHUTDOWN, "terminating connection: pgsplit is shutting down".into()),
            Unsupported(m) => (true, SqlState::FEATURE_NOT_SUPPORTED, m.clone()),
            BackendLost => {
                (true, SqlState::CONNECTION_FAILURE, "pgsplit lost the connection to the database server".into())
            }
            NotAdmin(_) => (true, SqlState::INVALID_AUTHORIZATION_SPECIFICATION, self.to_string()),
            NoPrimary(why) => (
                false,
                SqlState::READ_ONLY_SQL_TRANSACTION,
                format!("pgsplit: no primary is available for this statement ({why}); it was not sent to a replica"),
            ),
            Pool(p) => return Some(pool_response(p)),
        };
        let r = if fatal { ErrorResponse::fatal(code, message) } else { ErrorResponse::error(code, message) };
        Some(r)
    }

    /// Whether the request may be retried on another backend (nothing reached the client).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::BackendLost
                | Error::Pool(
                    PoolError::Connect(..) | PoolError::ConnectTimeout(_) | PoolError::Closed | PoolError::Io(_)
                )
        )
    }
}

fn pool_response(p: &PoolError) -> ErrorResponse {
    match p {
        // The server's own error (unknown database, bad password, too many connections) is
        // passed on as it is, so clients see what PostgreSQL would have told them.
        PoolError::Server(fields) => {
            let code = fields.code();
            let known = [
                SqlState::INVALID_CATALOG_NAME,
                SqlState::INVALID_PASSWORD,
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::ADMIN_SHUTDOWN,
            ]
            .into_iter()
            .find(|s| s.code() == code)
            .unwrap_or(SqlState::CONNECTION_FAILURE);
            ErrorResponse::fatal(known, fields.message().to_owned())
        }
        PoolError::CheckoutTimeout(d) => ErrorResponse::error(
            SqlState::CONNECTION_FAILURE,
            format!("pgsplit: no server connection became free within {} ms (pool.checkout_timeout)", d.as_millis()),
        )
        .with_hint("raise pool.size or pool.checkout_timeout, or look for long transactions in SHOW CLIENTS"),
        PoolError::Auth(_) | PoolError::NoCredential(_) => ErrorResponse::fatal(
            SqlState::INVALID_PASSWORD,
            format!("pgsplit could not log in to the database server: {p}"),
        ),
        PoolError::Connect(..) | PoolError::ConnectTimeout(_) | PoolError::Closed | PoolError::Io(_) => {
            ErrorResponse::error(SqlState::CONNECTION_FAILURE, format!("pgsplit: {p}"))
        }
        PoolError::PoolClosed => ErrorResponse::fatal(SqlState::ADMIN_SHUTDOWN, "pgsplit is shutting down"),
        PoolError::Protocol(_) | PoolError::Unsupported(_) | PoolError::Unexpected(_) => {
            ErrorResponse::error(SqlState::CONNECTION_FAILURE, format!("pgsplit: {p}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgsplit_protocol::error::ErrorFields;

    #[test]
    fn sqlstates() {
        let code = |e: Error| e.response().map(|r| r.code.0);
        assert_eq!(code(Error::AuthFailed("a".into())), Some("28P01"));
        assert_eq!(code(Error::UnknownDatabase("x".into())), Some("3D000"));
        assert_eq!(code(Error::TooManyClients), Some("53300"));
        assert_eq!(code(Error::NoUser), Some("28000"));
        assert_eq!(code(Error::ClientGone), None);
        assert_eq!(code(Error::Pool(PoolError::CheckoutTimeout(std::time::Duration::from_secs(1)))), Some("08006"));
        let server =
            ErrorFields { fields: vec![(b'C', "3D000".into()), (b'M', "database \"x\" does not exist".into())] };
        let r = Error::Pool(PoolError::Server(server)).response().unwrap();
        assert_eq!(r.code, SqlState::INVALID_CATALOG_NAME);
        assert_eq!(r.message, "database \"x\" does not exist");
    }
}
