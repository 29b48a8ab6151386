//! TLS for the public listener (`[server.tls]`): the PEM files read once at
//! startup into a rustls server configuration.
//!
//! ring is named as the crypto provider explicitly rather than relying on a
//! process-wide default, which rustls refuses to guess when a dependency
//! enables a second provider.

use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSettings;

/// Builds the server configuration, naming the setting whose file is wrong.
pub(crate) fn server_config(tls: &TlsSettings) -> anyhow::Result<ServerConfig> {
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("server.tls.cert: cannot read {}", tls.cert.display()))?;
    if chain.is_empty() {
        bail!(
            "server.tls.cert: {} holds no PEM certificate",
            tls.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("server.tls.key: cannot read {}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("server.tls: no usable TLS version")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("server.tls: the key does not fit the certificate")
}
