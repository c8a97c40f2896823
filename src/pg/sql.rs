//! Ordinary SQL connections: tokio-postgres over the stream [`socket`](super::socket) opened.
//!
//! We open the socket and settle TLS ourselves, then hand the stream to
//! `tokio_postgres::Config::connect_raw` with TLS off. So `sslmode` (including verify-ca and
//! verify-full, which tokio-postgres lacks) behaves exactly as on the replication connection,
//! and every failure is classified from typed errors rather than message text. The price:
//! SCRAM channel binding (`SCRAM-SHA-256-PLUS`) is not offered, and `Client::cancel_token` has no
//! socket settings to reconnect with.

use tokio_postgres::NoTls;

use super::conninfo::ConnInfo;
use super::socket;
use super::PgError;

impl ConnInfo {
    /// An ordinary SQL connection, its connection task spawned on the current tokio runtime.
    ///
    /// `application_name` is used unless the DSN or PGAPPNAME set one (libpq's
    /// `fallback_application_name` rule).
    pub async fn connect(&self, application_name: &str) -> Result<tokio_postgres::Client, PgError> {
        let stream = socket::open(self).await?;
        let mut config = tokio_postgres::Config::new();
        config
            .user(self.user())
            .dbname(self.dbname())
            .application_name(self.application_name().unwrap_or(application_name))
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Some(password) = self.password() {
            config.password(password);
        }
        if let Some(options) = self.options() {
            config.options(options);
        }
        let startup = async {
            config
                .connect_raw(stream, NoTls)
                .await
                .map_err(|e| startup_error(e, self))
        };
        let (client, connection) = socket::within_connect_timeout(self, startup).await?;
        let server = self.redacted();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%server, "connection ended: {}", PgError::from(e));
            }
        });
        Ok(client)
    }
}

/// During startup, a tokio-postgres failure that is neither the server's nor I/O is ours: the
/// server wants a password we do not have, or an authentication method tokio-postgres cannot
/// do. Retrying cannot fix either, so it becomes a (definite) authentication error.
fn startup_error(e: tokio_postgres::Error, info: &ConnInfo) -> PgError {
    let error = PgError::from(e);
    if !error.is_client_failure() {
        return error.at(info);
    }
    let missing = if info.password().is_none() {
        "; no password was given: set it in the DSN, PGPASSWORD or the pgpass file"
    } else {
        ""
    };
    PgError::auth(format!("authentication failed: {error}{missing}")).at(info)
}
