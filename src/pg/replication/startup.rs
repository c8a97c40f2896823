//! Startup and authentication of a replication connection.
//!
//! StartupMessage with `replication=database`, then whatever authentication the server's
//! pg_hba.conf asks for: trust, cleartext password, md5, or SCRAM-SHA-256 (without channel
//! binding: we answer `n,,`, which servers accept even when they also offer
//! SCRAM-SHA-256-PLUS). Then BackendKeyData, ParameterStatus and ReadyForQuery.
//! <https://www.postgresql.org/docs/15/protocol-flow.html#id-1.10.6.7.3>,
//! <https://www.postgresql.org/docs/15/sasl-authentication.html>.

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::framing::Frame;
use super::{ReplicationConnection, PINNED_OPTIONS};
use crate::pg::PgError;

impl ReplicationConnection {
    /// Run the startup exchange up to the first ReadyForQuery.
    pub(super) async fn startup(&mut self, application_name: &str) -> Result<(), PgError> {
        let options = match self.info.options() {
            Some(user) => format!("{user} {PINNED_OPTIONS}"),
            None => PINNED_OPTIONS.to_string(),
        };
        let user = self.info.user().to_string();
        let params = [
            ("user", user.as_str()),
            ("database", self.info.dbname()),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
            ("options", options.as_str()),
        ];
        frontend::startup_message(params, &mut self.wbuf).map_err(PgError::io)?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let message = match self.next_message().await? {
                Frame::Message(m) => m,
                Frame::CopyBothResponse => {
                    return Err(PgError::protocol("CopyBothResponse during startup"))
                }
            };
            match message {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let password = self.password_for("password")?;
                    frontend::password_message(&password, &mut self.wbuf).map_err(PgError::io)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = self.password_for("md5")?;
                    let hash = md5_hash(user.as_bytes(), &password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(PgError::io)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = Vec::new();
                    while let Some(m) = mechanisms.next().map_err(PgError::io)? {
                        offered.push(m.to_string());
                    }
                    if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(PgError::auth(format!(
                            "the server offers SASL mechanisms {offered:?}, and we speak only \
                             {SCRAM_SHA_256}"
                        )));
                    }
                    let password = self.password_for("scram-sha-256")?;
                    let s = ScramSha256::new(&password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(PgError::io)?;
                    scram = Some(s);
                    self.flush().await?;
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        PgError::protocol("SASL continue without a SASL exchange")
                    })?;
                    s.update(body.data())
                        .map_err(|e| PgError::auth(format!("SCRAM authentication failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(PgError::io)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| PgError::protocol("SASL final without a SASL exchange"))?;
                    s.finish(body.data()).map_err(|e| {
                        PgError::auth(format!(
                            "the server's SCRAM signature did not verify ({e}); it may not be \
                             the server it claims to be"
                        ))
                    })?;
                }
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(PgError::auth(
                        "the server asks for GSSAPI/SSPI/Kerberos authentication, which \
                         understudy does not support; give this role a password method \
                         (scram-sha-256) in pg_hba.conf"
                            .into(),
                    ));
                }
                Message::BackendKeyData(body) => self.backend_pid = Some(body.process_id()),
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(self.server_error(body.fields())?),
                other => return Err(self.unexpected(&other, "startup")),
            }
        }
    }

    fn password_for(&self, method: &str) -> Result<Vec<u8>, PgError> {
        self.info.password().map(<[u8]>::to_vec).ok_or_else(|| {
            PgError::auth(format!(
                "the server asks for a password ({method}) and none was given: set it in the \
                 DSN, PGPASSWORD or the pgpass file"
            ))
        })
    }
}
