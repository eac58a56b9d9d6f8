//! `shoald cert`: a development certificate authority and the node and
//! client certificates it signs (rcgen), for local clusters and tests.
//!
//! Node certificates carry the name `shoal` (what dialers verify), plus
//! `localhost`, `127.0.0.1` and any extra names given, and may act as TLS
//! server and client (peers dial each other). Client certificates may act
//! only as TLS clients. The CA is rebuilt from its key file to sign: its
//! parameters are a pure function of nothing, so the rebuilt CA has the
//! subject and key of the one on disk. Private keys are written with mode
//! 0600. Existing files are never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A node: TLS server and client.
    Node,
    /// A client: TLS client only.
    Client,
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Shoal development CA");
    name.push(DnType::OrganizationName, "Shoal");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn write_new(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// Creates `ca.pem` and `ca.key` in `dir`.
pub fn make_ca(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let certificate = ca_params()?.self_signed(&key)?;
    let certificate_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if certificate_path.exists() || key_path.exists() {
        bail!("{} already holds a CA", dir.display());
    }
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&certificate_path, &certificate.pem(), false)?;
    Ok((certificate_path, key_path))
}

/// Creates `NAME.pem` and `NAME.key` in `dir`, signed by the CA there.
pub fn make_leaf(
    dir: &Path,
    name: &str,
    kind: Kind,
    extra_names: &[String],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("certificate name {name:?} must be letters, digits, '-' or '_'");
    }
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).with_context(|| {
        format!(
            "cannot read {} (run `shoald cert ca --dir {}` first)",
            ca_key_path.display(),
            dir.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{} is not a private key", ca_key_path.display()))?;
    let ca = ca_params()?.self_signed(&ca_key)?;

    let mut names = match kind {
        Kind::Node => vec!["shoal".to_string(), "localhost".into(), "127.0.0.1".into()],
        Kind::Client => vec![name.to_string()],
    };
    names.extend(extra_names.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match kind {
        Kind::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &ca, &ca_key)?;
    let certificate_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&certificate_path, &certificate.pem(), false)?;
    Ok((certificate_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_verifies_against_the_ca_and_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path()).unwrap();
        assert!(
            make_ca(dir.path()).is_err(),
            "a second CA must not replace the first"
        );
        make_leaf(dir.path(), "node-1", Kind::Node, &[]).unwrap();
        assert!(make_leaf(dir.path(), "node-1", Kind::Node, &[]).is_err());
        make_leaf(dir.path(), "client", Kind::Client, &[]).unwrap();
        assert!(make_leaf(dir.path(), "../evil", Kind::Client, &[]).is_err());

        // The node's certificate chains to the CA: a server config builds and
        // rustls accepts the pair.
        let files = shoal_cluster::transport::tls::TlsFiles {
            ca: dir.path().join("ca.pem"),
            certificate: Some(dir.path().join("node-1.pem")),
            key: Some(dir.path().join("node-1.key")),
        };
        shoal_cluster::transport::tls::server_config(
            &files,
            true,
            &shoal_cluster::transport::tls::TransportLimits::default(),
        )
        .unwrap();
    }
}
