//! The certificate authorities this client trusts besides the system's: a project whose
//! server certificate is signed by a certificate authority of its own (`--ca-cert FILE`, or
//! `ca_cert` in client.toml) is trusted without touching the machine's trust store, and
//! every other server stays checked against the system's roots as before.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificates in the PEM file at `path`, each checked to be usable as a root: a file
/// that is missing, unreadable, holds no certificate or a malformed one is an error naming
/// it, before any connection is made.
pub fn load_ca_file(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .map_err(|error| anyhow::anyhow!("cannot read the CA certificate {}: {error}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow::anyhow!("the CA certificate {} is not valid PEM: {error}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!(
            "the CA certificate {} holds no certificate (a PEM file with -----BEGIN CERTIFICATE----- blocks)",
            path.display()
        );
    }
    let mut roots = rustls::RootCertStore::empty();
    certificates
        .iter()
        .map(|certificate| {
            roots
                .add(certificate.clone())
                .map_err(|error| anyhow::anyhow!("the CA certificate {} is malformed: {error}", path.display()))?;
            reqwest::Certificate::from_der(certificate).map_err(anyhow::Error::from)
        })
        .collect()
}

/// Why the server's certificate was refused, when that is why `error` happened: the TLS
/// error, such as "invalid peer certificate: UnknownIssuer".
pub fn untrusted_certificate(error: &reqwest::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(tls_error @ rustls::Error::InvalidCertificate(_)) = tls_error_in(current) {
            return Some(tls_error.to_string());
        }
        cause = current.source();
    }
    None
}

/// The TLS error `error` is or wraps. TLS errors reach reqwest inside I/O errors, nested,
/// and an I/O error's `source` skips the error it wraps.
fn tls_error_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls_error) = error.downcast_ref::<rustls::Error>() {
        return Some(tls_error);
    }
    tls_error_in(error.downcast_ref::<std::io::Error>()?.get_ref()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(path: &Path) -> String {
        format!("{:#}", load_ca_file(path).unwrap_err())
    }

    #[test]
    fn a_ca_certificate_loads_with_the_rest_of_its_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let certificate = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.self_signed(&key).unwrap().pem()
        };
        std::fs::write(&path, certificate("one")).unwrap();
        assert_eq!(load_ca_file(&path).unwrap().len(), 1);
        std::fs::write(&path, certificate("one") + &certificate("two")).unwrap();
        assert_eq!(load_ca_file(&path).unwrap().len(), 2);
    }

    #[test]
    fn a_missing_empty_or_malformed_ca_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let error = error_of(&path);
        assert!(error.contains("cannot read the CA certificate") && error.contains("ca.pem"), "{error}");

        std::fs::write(&path, "this is not a certificate\n").unwrap();
        let error = error_of(&path);
        assert!(error.contains("holds no certificate") && error.contains("ca.pem"), "{error}");

        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&path, key.serialize_pem()).unwrap();
        assert!(error_of(&path).contains("holds no certificate"), "a key is not a certificate");

        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n").unwrap();
        let error = error_of(&path);
        assert!(error.contains("is malformed") && error.contains("ca.pem"), "{error}");

        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").unwrap();
        let error = error_of(&path);
        assert!(error.contains("not valid PEM") && error.contains("ca.pem"), "{error}");
    }
}
