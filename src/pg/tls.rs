//! TLS client settings per libpq `sslmode`, on rustls (ring).
//!
//! What each mode verifies (<https://www.postgresql.org/docs/15/libpq-ssl.html>, table 34.1):
//! * `prefer`, `require`: encrypt, verify nothing. Any certificate is accepted, as libpq does; the
//!   handshake signatures are still checked, so the peer holds the key of the certificate it sent.
//! * `require` when the root CA file exists: as `verify-ca` (libpq's backwards compatibility
//!   rule: "if a root CA file exists, the behavior of sslmode=require will be the same as that of
//!   verify-ca").
//! * `verify-ca`: the chain must lead to a CA in `sslrootcert` (default
//!   `~/.postgresql/root.crt`); the host name is not checked.
//! * `verify-full`: the chain, and the certificate must name the host we dialled (a DNS name, or
//!   an IP address in its subjectAltName).
//!
//! Invariant: a missing or unreadable CA file for `verify-*` is an error before any network I/O,
//! never a silent downgrade.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::conninfo::SslMode;

/// The local TLS setup is wrong (a CA file that is missing or holds no certificate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(String);

/// What a mode verifies, once the CA file question is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

/// The rustls client configuration for `mode`, or `None` for `disable`.
/// `root_cert` is the `sslrootcert` path (explicit or the default `~/.postgresql/root.crt`).
pub fn client_config(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsSetupError> {
    let root_exists = root_cert.is_some_and(Path::exists);
    let verify = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer => Verify::Nothing,
        SslMode::Require if root_exists => Verify::Chain,
        SslMode::Require => Verify::Nothing,
        SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull => Verify::ChainAndName,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(format!("TLS setup failed: {e}")))?;
    let mut config = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth(),
        Verify::Chain | Verify::ChainAndName => {
            let roots = load_roots(mode, root_cert)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError(format!("TLS setup failed: {e}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = match verify {
                Verify::Chain => Arc::new(ChainOnly { inner: webpki }),
                _ => webpki,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    // As libpq 17 does; PostgreSQL 15/16 servers ignore ALPN.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn load_roots(mode: SslMode, root_cert: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let Some(path) = root_cert else {
        return Err(TlsSetupError(format!(
            "sslmode={mode} needs the CA certificate that signed the server's certificate, and \
             there is no home directory to find ~/.postgresql/root.crt in; set sslrootcert=/path/ca.crt"
        )));
    };
    let pem = std::fs::read(path).map_err(|e| {
        TlsSetupError(format!(
            "sslmode={mode} needs the CA certificate that signed the server's certificate, but \
             {} cannot be read ({e}); set sslrootcert=/path/ca.crt",
            path.display()
        ))
    })?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| {
            TlsSetupError(format!(
                "{} is not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
        roots.add(cert).map_err(|e| {
            TlsSetupError(format!(
                "{} holds a certificate rustls cannot use as a CA: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(roots)
}

/// `prefer`/`require`: any certificate, but the handshake must be signed by its key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the full web-PKI check, except that a certificate for another name passes.
/// webpki checks the name only after the chain verified, so a name error implies a good chain.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_has_no_config_and_prefer_needs_no_ca() {
        assert!(client_config(SslMode::Disable, None).unwrap().is_none());
        let missing = Path::new("/nonexistent/root.crt");
        assert!(client_config(SslMode::Prefer, Some(missing))
            .unwrap()
            .is_some());
        assert!(client_config(SslMode::Require, Some(missing))
            .unwrap()
            .is_some());
    }

    #[test]
    fn verify_modes_need_a_readable_ca() {
        let missing = Path::new("/nonexistent/root.crt");
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = client_config(mode, Some(missing)).unwrap_err().to_string();
            assert!(e.contains("/nonexistent/root.crt"), "{e}");
            assert!(e.contains("sslrootcert"), "{e}");
            let e = client_config(mode, None).unwrap_err().to_string();
            assert!(e.contains("sslrootcert"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.crt");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = client_config(SslMode::VerifyFull, Some(&not_pem)).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        // require with a CA file present verifies the chain, so a bad file is an error too.
        let e = client_config(SslMode::Require, Some(&not_pem)).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }
}
