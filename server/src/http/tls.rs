//! HTTPS without a reverse proxy: `serve --tls-cert FILE --tls-key FILE`.
//!
//! The certificate chain and its key are read and checked against each other when the
//! server starts, so that a wrong file stops it with a message naming that file rather
//! than failing every handshake afterwards. SIGHUP reads them again (a renewed
//! certificate); new files that do not work are logged and the ones in force are kept.
//!
//! The handshake runs in each connection's own task (see [`super::connections`]), under
//! the header timeout: a client that connects and never finishes it holds only its own
//! connection, and not for long. A plain HTTP request sent to the TLS port is answered in
//! plain HTTP with a 400 that says to use https, rather than with bytes no HTTP client
//! can read.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use wasmgrid_protocol::api::{ErrorBody, ErrorDetail};

/// The files `--tls-cert` and `--tls-key` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then the intermediates that chain it to a root.
    pub certificate: PathBuf,
    /// PEM: the certificate's private key, as PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// What serving HTTPS needs: the acceptor, and the certificate it presents, which SIGHUP
/// replaces. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    files: Arc<TlsFiles>,
    provider: Arc<CryptoProvider>,
    acceptor: TlsAcceptor,
    current: Arc<CurrentCertificate>,
    /// SIGHUP, caught from [`Tls::load`] on, until [`Tls::take_reload_signal`] takes it.
    reload_signal: Arc<Mutex<Option<Signal>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// The certificate every handshake presents, whatever name the client asks for.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("certificate lock poisoned").clone())
    }
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Most bytes of a plain HTTP request read before answering it (its headers, usually).
const MAX_PLAIN_REQUEST: usize = 16 << 10;

impl Tls {
    /// Reads and checks the certificate chain and key. Within a Tokio runtime, it also
    /// starts catching SIGHUP at once: a SIGHUP sent as soon as the server announces itself
    /// would otherwise kill it, as is the signal's default.
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = certified_key(&files, &provider)?;
        let current = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The server speaks HTTP/1.1 only; saying so keeps clients from choosing HTTP/2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let reload_signal = tokio::runtime::Handle::try_current().ok().and_then(|_| signal(SignalKind::hangup()).ok());
        Ok(Self {
            files: Arc::new(files),
            provider,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            reload_signal: Arc::new(Mutex::new(reload_signal)),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and presents the new certificate from the next handshake on;
    /// on an error, the certificate in force stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let certified = certified_key(&self.files, &self.provider)?;
        *self.current.0.write().expect("certificate lock poisoned") = Arc::new(certified);
        Ok(())
    }

    /// The SIGHUP stream caught by [`Tls::load`], once: whoever serves reloads on it.
    pub(super) fn take_reload_signal(&self) -> Option<Signal> {
        self.reload_signal.lock().expect("signal lock poisoned").take()
    }

    /// Completes the handshake on a new connection. `None`: it was plain HTTP, and has been
    /// told to use https. The caller bounds how long this may take.
    pub(super) async fn accept(&self, stream: TcpStream) -> io::Result<Option<TlsStream<TcpStream>>> {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match first[0] {
            TLS_HANDSHAKE_RECORD => self.acceptor.accept(stream).await.map(Some),
            // A request line starts with a method in capitals: plain HTTP.
            b'A'..=b'Z' => {
                refuse_plain_http(stream).await?;
                Ok(None)
            }
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a TLS handshake (first byte {other:#04x})"),
            )),
        }
    }
}

/// Reads what a plain HTTP client sent (up to the end of its headers) and answers with a
/// 400 in the API's JSON error shape, which `wasmgrid` shows as it is.
async fn refuse_plain_http(mut stream: TcpStream) -> io::Result<()> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 2048];
    while received.len() < MAX_PLAIN_REQUEST && !received.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        received.extend_from_slice(&buffer[..read]);
    }
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorDetail {
            code: "bad_request".to_owned(),
            message: "this server speaks HTTPS only: use https:// in its URL".to_owned(),
        },
    })
    .expect("an error body serialises");
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Closing with unread bytes (a request body) would reset the connection, and the client
    // could lose the answer: read what else it sends, up to a bound, until it closes (the
    // caller's deadline bounds the wait).
    let mut drained = 0;
    while drained < MAX_PLAIN_REQUEST {
        match stream.read(&mut buffer).await? {
            0 => break,
            read => drained += read,
        }
    }
    Ok(())
}

/// The certificate chain and key in `files`, checked: each file holds what it should, the
/// key is one this server can sign with, and it is the key of the chain's first
/// certificate. Every error names the file at fault.
fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = read_certificates(&files.certificate)?;
    let key = read_key(&files.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| anyhow::anyhow!("the TLS key {} cannot be used: {error}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => anyhow::bail!(
            "the TLS key {} is not the key of the certificate in {}",
            files.key.display(),
            files.certificate.display()
        ),
        Err(error) => {
            anyhow::bail!("the first certificate in {} is malformed: {error}", files.certificate.display())
        }
    }
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| anyhow::anyhow!("cannot read the {what} {}: {error}", path.display()))
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path, "TLS certificate")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow::anyhow!("the TLS certificate {} is not valid PEM: {error}", path.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "the TLS certificate {} holds no certificate (a PEM file with -----BEGIN CERTIFICATE----- blocks)",
            path.display()
        );
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read_file(path, "TLS key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "the TLS key {} holds no private key (a PEM file with a -----BEGIN PRIVATE KEY-----, \
             RSA PRIVATE KEY or EC PRIVATE KEY block)",
            path.display()
        ),
        error => anyhow::anyhow!("the TLS key {} is not valid PEM: {error}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for localhost and its key, as PEM files in a directory of their own.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let certificate =
                rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("cert.pem"), certificate.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
            Self { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
            std::fs::write(self.path(name), contents).unwrap();
        }

        fn tls_files(&self) -> TlsFiles {
            TlsFiles { certificate: self.path("cert.pem"), key: self.path("key.pem") }
        }

        fn load_error(&self) -> String {
            format!("{:#}", Tls::load(self.tls_files()).unwrap_err())
        }
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        let files = Files::new();
        assert!(Tls::load(files.tls_files()).is_ok());
    }

    #[test]
    fn keys_in_pkcs8_pkcs1_and_sec1_form_load() {
        // An EC key, as rcgen writes it (PKCS#8), then the same key as SEC1.
        let files = Files::new();
        assert!(Tls::load(files.tls_files()).is_ok());
        let pkcs8 = pkcs8_der(&std::fs::read_to_string(files.path("key.pem")).unwrap());
        files.write("key.pem", pem_block("EC PRIVATE KEY", &key_inside_pkcs8(&pkcs8)));
        assert_eq!(files.load_result(), "ok");

        // An RSA key as PKCS#8, then the same key as PKCS#1.
        let rsa_pkcs8 = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rsa-2048.pkcs8.pem"));
        let rsa_key = rcgen::KeyPair::from_pem(rsa_pkcs8).unwrap();
        let certificate =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&rsa_key).unwrap();
        files.write("cert.pem", certificate.pem());
        files.write("key.pem", rsa_pkcs8);
        assert_eq!(files.load_result(), "ok");
        files.write("key.pem", pem_block("RSA PRIVATE KEY", &key_inside_pkcs8(&pkcs8_der(rsa_pkcs8))));
        assert_eq!(files.load_result(), "ok");
    }

    impl Files {
        fn load_result(&self) -> String {
            Tls::load(self.tls_files()).map_or_else(|error| format!("{error:#}"), |_| "ok".to_owned())
        }
    }

    fn pkcs8_der(pem: &str) -> Vec<u8> {
        match PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap() {
            PrivateKeyDer::Pkcs8(der) => der.secret_pkcs8_der().to_vec(),
            _ => panic!("not PKCS#8"),
        }
    }

    /// The key a PKCS#8 document wraps (an RSA key's PKCS#1 form, an EC key's SEC1 form):
    /// the OCTET STRING after the version and the algorithm in its outer sequence.
    fn key_inside_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
        let (_, outer) = der_element(pkcs8, &mut 0);
        let mut position = 0;
        let _version = der_element(outer, &mut position);
        let _algorithm = der_element(outer, &mut position);
        let (tag, key) = der_element(outer, &mut position);
        assert_eq!(tag, 0x04, "an OCTET STRING");
        key.to_vec()
    }

    /// The tag and contents of the DER element at `position`, moving past it.
    fn der_element<'a>(der: &'a [u8], position: &mut usize) -> (u8, &'a [u8]) {
        let tag = der[*position];
        let mut length = usize::from(der[*position + 1]);
        let mut header = 2;
        if length & 0x80 != 0 {
            let bytes = length & 0x7f;
            length = der[*position + 2..*position + 2 + bytes].iter().fold(0, |n, b| n << 8 | usize::from(*b));
            header += bytes;
        }
        let start = *position + header;
        *position = start + length;
        (tag, &der[start..start + length])
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = text.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).unwrap()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }

    #[test]
    fn a_missing_file_is_named() {
        let files = Files::new();
        std::fs::remove_file(files.path("cert.pem")).unwrap();
        let error = files.load_error();
        assert!(error.contains("cannot read the TLS certificate") && error.contains("cert.pem"), "{error}");

        let files = Files::new();
        std::fs::remove_file(files.path("key.pem")).unwrap();
        let error = files.load_error();
        assert!(error.contains("cannot read the TLS key") && error.contains("key.pem"), "{error}");
    }

    #[test]
    fn files_that_hold_the_wrong_thing_are_named() {
        let files = Files::new();
        let key = std::fs::read(files.path("key.pem")).unwrap();
        files.write("cert.pem", &key);
        let error = files.load_error();
        assert!(error.contains("holds no certificate") && error.contains("cert.pem"), "{error}");

        let files = Files::new();
        let certificate = std::fs::read(files.path("cert.pem")).unwrap();
        files.write("key.pem", &certificate);
        let error = files.load_error();
        assert!(error.contains("holds no private key") && error.contains("key.pem"), "{error}");

        let files = Files::new();
        files.write("cert.pem", b"not a certificate at all\n");
        assert!(files.load_error().contains("holds no certificate"));
    }

    #[test]
    fn malformed_contents_are_named() {
        let files = Files::new();
        files.write("cert.pem", pem_block("CERTIFICATE", b"\x30\x03garbage"));
        let error = files.load_error();
        assert!(error.contains("cert.pem") && error.contains("malformed"), "{error}");

        let files = Files::new();
        files.write("key.pem", pem_block("PRIVATE KEY", b"\x30\x03garbage"));
        let error = files.load_error();
        assert!(error.contains("key.pem") && error.contains("cannot be used"), "{error}");

        let files = Files::new();
        files.write("cert.pem", "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n");
        let error = files.load_error();
        assert!(error.contains("cert.pem") && error.contains("not valid PEM"), "{error}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let files = Files::new();
        files.write("key.pem", rcgen::KeyPair::generate().unwrap().serialize_pem());
        let error = files.load_error();
        assert!(error.contains("key.pem is not the key of the certificate in"), "{error}");
        assert!(error.contains("cert.pem"), "{error}");
    }

    #[test]
    fn a_reload_takes_new_files_and_keeps_the_old_certificate_when_they_are_broken() {
        let files = Files::new();
        let tls = Tls::load(files.tls_files()).unwrap();
        let presented = || tls.current.0.read().unwrap().cert[0].clone();
        let first = presented();

        let renewed = Files::new();
        files.write("cert.pem", std::fs::read(renewed.path("cert.pem")).unwrap());
        files.write("key.pem", std::fs::read(renewed.path("key.pem")).unwrap());
        tls.reload().unwrap();
        let second = presented();
        assert_ne!(first, second, "the renewed certificate is presented");

        files.write("key.pem", rcgen::KeyPair::generate().unwrap().serialize_pem());
        let error = format!("{:#}", tls.reload().unwrap_err());
        assert!(error.contains("is not the key of the certificate"), "{error}");
        assert_eq!(presented(), second, "a broken renewal changes nothing");
    }
}
