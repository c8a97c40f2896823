//! Startup and authentication, shared by the replication connection and the apply session.
//!
//! StartupMessage with the caller's parameters (`replication=database` for a walsender, none for
//! an ordinary backend), then whatever authentication the server's pg_hba.conf asks for: trust,
//! cleartext password, md5, or SCRAM-SHA-256 (without channel binding: we answer `n,,`, which
//! servers accept even when they also offer SCRAM-SHA-256-PLUS). Then BackendKeyData,
//! ParameterStatus and ReadyForQuery.
//! <https://www.postgresql.org/docs/15/protocol-flow.html#id-1.10.6.7.3>,
//! <https://www.postgresql.org/docs/15/sasl-authentication.html>.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::framing::{self, Frame};
use super::{message_name, ReplicationConnection, PINNED_OPTIONS};
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::ServerError;
use crate::pg::socket::Stream;
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
        self.backend_pid = run(&mut self.stream, &mut self.rbuf, &self.info, &params).await?;
        Ok(())
    }
}

/// Run the startup exchange on a freshly opened `stream` up to the first ReadyForQuery: send
/// StartupMessage with `params`, then authenticate as `info.user()` with `info.password()`.
/// Returns the backend's process id. Bytes read past ReadyForQuery (none, normally) stay in
/// `rbuf`. Errors do not name the server yet: the caller adds `.at(info)`.
pub(in crate::pg) async fn run(
    stream: &mut Stream,
    rbuf: &mut BytesMut,
    info: &ConnInfo,
    params: &[(&str, &str)],
) -> Result<Option<i32>, PgError> {
    let mut wire = Wire {
        stream,
        rbuf,
        wbuf: BytesMut::with_capacity(512),
    };
    frontend::startup_message(params.iter().copied(), &mut wire.wbuf).map_err(PgError::io)?;
    wire.flush().await?;

    let user = info.user();
    let mut backend_pid = None;
    let mut scram: Option<ScramSha256> = None;
    loop {
        match wire.next_message().await? {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                let password = password_for(info, "password")?;
                frontend::password_message(&password, &mut wire.wbuf).map_err(PgError::io)?;
                wire.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = password_for(info, "md5")?;
                let hash = md5_hash(user.as_bytes(), &password, body.salt());
                frontend::password_message(hash.as_bytes(), &mut wire.wbuf).map_err(PgError::io)?;
                wire.flush().await?;
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
                let password = password_for(info, "scram-sha-256")?;
                let s = ScramSha256::new(&password, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut wire.wbuf)
                    .map_err(PgError::io)?;
                scram = Some(s);
                wire.flush().await?;
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| PgError::protocol("SASL continue without a SASL exchange"))?;
                s.update(body.data())
                    .map_err(|e| PgError::auth(format!("SCRAM authentication failed: {e}")))?;
                frontend::sasl_response(s.message(), &mut wire.wbuf).map_err(PgError::io)?;
                wire.flush().await?;
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
            Message::BackendKeyData(body) => backend_pid = Some(body.process_id()),
            Message::ReadyForQuery(_) => return Ok(backend_pid),
            Message::ErrorResponse(body) => {
                let e = ServerError::from_fields(body.fields()).map_err(PgError::io)?;
                return Err(PgError::server(e));
            }
            other => {
                return Err(PgError::protocol(format!(
                    "unexpected {} during startup",
                    message_name(&other)
                )))
            }
        }
    }
}

fn password_for(info: &ConnInfo, method: &str) -> Result<Vec<u8>, PgError> {
    info.password().map(<[u8]>::to_vec).ok_or_else(|| {
        PgError::auth(format!(
            "the server asks for a password ({method}) and none was given: set it in the \
             DSN, PGPASSWORD or the pgpass file"
        ))
    })
}

/// The connection being started.
struct Wire<'a> {
    stream: &'a mut Stream,
    rbuf: &'a mut BytesMut,
    wbuf: BytesMut,
}

impl Wire<'_> {
    async fn flush(&mut self) -> Result<(), PgError> {
        self.stream
            .write_all_buf(&mut self.wbuf)
            .await
            .map_err(PgError::io)?;
        self.stream.flush().await.map_err(PgError::io)
    }

    /// The next whole backend message; NoticeResponse and ParameterStatus are skipped.
    async fn next_message(&mut self) -> Result<Message, PgError> {
        loop {
            match framing::next_frame(self.rbuf).map_err(PgError::io)? {
                Some(Frame::Message(Message::NoticeResponse(body))) => {
                    let notice = ServerError::from_fields(body.fields()).map_err(PgError::io)?;
                    tracing::debug!("{}: {} ({})", notice.severity, notice.message, notice.code);
                }
                Some(Frame::Message(Message::ParameterStatus(_))) => {}
                Some(Frame::Message(m)) => return Ok(m),
                Some(Frame::CopyBothResponse) => {
                    return Err(PgError::protocol("CopyBothResponse during startup"))
                }
                None => {
                    if self.stream.read_buf(self.rbuf).await.map_err(PgError::io)? == 0 {
                        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                        return Err(PgError::io(eof));
                    }
                }
            }
        }
    }
}
