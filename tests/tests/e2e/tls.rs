//! HTTPS without a proxy: the real server on a certificate the test makes, signed by a
//! certificate authority of the test's own, and real volunteers that trust it (`--ca-cert`,
//! or `ca_cert` in client.toml); what volunteers that do not trust it get, what plain HTTP
//! to the TLS port gets, how long a handshake that never finishes holds a connection, and
//! a certificate renewed under a running server (SIGHUP).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wasmgrid_server::publishing::ReplicationPolicy;

use crate::connections::closed_by_server;
use crate::harness::{Server, Volunteer, binary, port_of, signal, single, workunit};

const VALIDATED: &str = "select count(*) from work_unit where state = 'validated'";
const TIMEOUT: Duration = Duration::from_secs(120);

/// A certificate authority and a certificate it signed for this machine (127.0.0.1 and
/// localhost), as PEM files: `ca.pem`, `cert.pem`, `key.pem`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(name: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_certificate = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, &ca_key);

        let key = rcgen::KeyPair::generate().unwrap();
        let mut server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = server.signed_by(&key, &issuer).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_certificate.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), certificate.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    /// The `serve` flags for this certificate.
    fn server_args(&self) -> [String; 4] {
        let path = |name: &str| self.path(name).display().to_string();
        ["--tls-cert".to_owned(), path("cert.pem"), "--tls-key".to_owned(), path("key.pem")]
    }

    /// An HTTP client that trusts this authority (and the system's).
    fn http_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.path("ca.pem")).unwrap()).unwrap();
        reqwest::Client::builder().add_root_certificate(ca).pool_max_idle_per_host(0).build().unwrap()
    }
}

/// A server on `pki`'s certificate, with `more` flags.
async fn start_https(pki: &Pki, more: &[&str]) -> Server {
    let tls_args = pki.server_args();
    let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    args.extend(more);
    let server = Server::start_with(&args).await;
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    server
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_whole_batch_runs_over_https_with_the_projects_own_certificate_authority() {
    let pki = Pki::new("grid");
    let server = start_https(&pki, &[]).await;
    let policy = ReplicationPolicy { min_quorum: 2, target_replicas: 2, ..ReplicationPolicy::default() };
    let ids = server.publish(&workunit("probes/determinism.wat"), 6, policy).await;

    // One volunteer names the authority with the flag, the other in client.toml, by a
    // path relative to its data directory.
    let flagged = Volunteer::unattached();
    flagged.attach_to(&server, "flagged", &["--ca-cert", &pki.ca()]).await;
    let configured = Volunteer::unattached();
    std::fs::copy(pki.path("ca.pem"), configured.data_dir.path().join("grid-ca.pem")).unwrap();
    let settings = configured.data_dir.path().join("client.toml");
    let text = std::fs::read_to_string(&settings).unwrap() + "ca_cert = \"grid-ca.pem\"\n";
    std::fs::write(&settings, text).unwrap();
    configured.attach_to(&server, "configured", &[]).await;

    let ca = pki.ca();
    let flagged_run = ["--cores", "2", "--ca-cert", &ca];
    tokio::join!(flagged.run_until_idle_with(&flagged_run, TIMEOUT), configured.run_until_idle(TIMEOUT));

    assert_eq!(server.count(VALIDATED).await, ids.len() as i64);
    assert_eq!(server.count("select count(*) from replica where validate_state = 'valid'").await, 12);
    assert_eq!(server.count("select count(distinct host_id) from replica").await, 2);
}

#[tokio::test]
async fn the_site_knows_it_is_reached_over_https() {
    let pki = Pki::new("site");
    let server = start_https(&pki, &[]).await;
    let client = pki.http_client();

    // The attach command the home page shows, and the cookies it sets, are for https,
    // whatever a visitor's X-Forwarded-Proto claims.
    let home = client.get(format!("{}/", server.url)).header("x-forwarded-proto", "http").send().await.unwrap();
    let home = home.text().await.unwrap();
    assert!(home.contains(&format!("wasmgrid attach {}", server.url)), "{home}");
    let signup = client.get(format!("{}/signup", server.url)).send().await.unwrap();
    let cookies: Vec<&str> =
        signup.headers().get_all("set-cookie").iter().map(|value| value.to_str().unwrap()).collect();
    assert!(!cookies.is_empty() && cookies.iter().all(|cookie| cookie.contains("; Secure")), "{cookies:?}");

    // A trusted proxy that reaches the server over TLS is believed about its own client.
    let behind_proxy = start_https(&pki, &["--trusted-proxy", "127.0.0.1"]).await;
    let home = |proto: Option<&'static str>| {
        let mut request = client.get(format!("{}/", behind_proxy.url));
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        async { request.send().await.unwrap().text().await.unwrap() }
    };
    let plain_behind = behind_proxy.url.replace("https://", "http://");
    assert!(home(Some("http")).await.contains(&format!("wasmgrid attach {plain_behind}")));
    assert!(home(None).await.contains(&format!("wasmgrid attach {}", behind_proxy.url)), "TLS, and no word of it");
}

#[tokio::test]
async fn a_volunteer_without_the_certificate_authority_refuses_the_server_and_loses_nothing() {
    let pki = Pki::new("private");
    let server = start_https(&pki, &[]).await;
    server.publish(&workunit("probes/spin.wat"), 1, single()).await;
    let volunteer = Volunteer::unattached();

    // Attaching without the authority: refused on the certificate, before any account.
    let output = volunteer.command(&["attach", &server.url, "--name", "untrusting"]).output().await.unwrap();
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(error.contains(&format!("the certificate of {} is not trusted", server.url)), "{error}");
    assert!(error.contains("UnknownIssuer") && error.contains("--ca-cert FILE"), "{error}");
    assert_eq!(server.count("select count(*) from account").await, 0);
    assert!(!volunteer.data_dir.path().join("projects.json").exists());

    // Attached with it, the daemon starts a task; then the daemon runs without it (the
    // volunteer forgot the flag): the task finishes and is kept, unreported.
    volunteer.attach_to(&server, "trusting", &["--ca-cert", &pki.ca()]).await;
    let daemon = volunteer.command(&["run", "--cores", "1", "--ca-cert", &pki.ca()]).spawn().unwrap();
    volunteer.wait_for_task_state("running", TIMEOUT).await;
    signal(&daemon, libc::SIGTERM);
    assert!(daemon.wait_with_output().await.unwrap().status.success());

    let daemon = volunteer.command(&["run", "--cores", "1"]).spawn().unwrap();
    volunteer.wait_for_task_state("finished", TIMEOUT).await;
    let give_up = Instant::now() + TIMEOUT;
    while volunteer.status().await["projects"][0]["failed_contacts"].as_u64() == Some(0) {
        assert!(Instant::now() < give_up, "the daemon never tried the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&daemon, libc::SIGTERM);
    let output = daemon.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("is not trusted"), "the log says why: {}", stderr(&output));
    assert_eq!(server.count("select count(*) from replica where outcome is not null").await, 0, "nothing reported");
    assert_eq!(volunteer.status().await["tasks"][0]["state"], "finished", "the result is kept");

    volunteer.run_until_idle_with(&["--cores", "1", "--ca-cert", &pki.ca()], TIMEOUT).await;
    assert_eq!(server.count(VALIDATED).await, 1);
    assert_eq!(server.count("select count(*) from replica").await, 1, "the same replica, reported late");
}

#[tokio::test]
async fn an_unusable_ca_file_stops_the_client_with_its_name() {
    let volunteer = Volunteer::unattached();
    let broken = volunteer.data_dir.path().join("broken-ca.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n").unwrap();
    let missing = volunteer.data_dir.path().join("missing-ca.pem");
    for (path, expected) in [(&broken, "is malformed"), (&missing, "cannot read the CA certificate")] {
        let path = path.display().to_string();
        let output = volunteer.command(&["attach", "https://127.0.0.1:1", "--ca-cert", &path]).output().await.unwrap();
        assert!(!output.status.success());
        assert!(stderr(&output).contains(expected) && stderr(&output).contains(&path), "{}", stderr(&output));
    }
    let output = volunteer.command(&["set", "ca_cert", &missing.display().to_string()]).output().await.unwrap();
    assert!(!output.status.success(), "a file that cannot be used is not saved");
    assert!(stderr(&output).contains("cannot read the CA certificate"), "{}", stderr(&output));
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_told_to_use_https_and_the_server_keeps_serving() {
    let pki = Pki::new("plain");
    let server = start_https(&pki, &[]).await;
    let plain_url = server.url.replace("https://", "http://");

    let response = reqwest::get(format!("{plain_url}/healthz")).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "this server speaks HTTPS only: use https:// in its URL");

    let volunteer = Volunteer::unattached();
    let output = volunteer.command(&["attach", &plain_url, "--name", "plain"]).output().await.unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("this server speaks HTTPS only"), "{}", stderr(&output));

    // Bytes that are neither TLS nor HTTP: closed.
    let mut garbage = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    garbage.write_all(&[0, 1, 2, 3, 4, 5, 6, 7]).await.unwrap();
    assert!(closed_by_server(&mut garbage, TIMEOUT).await.is_some());

    let health = pki.http_client().get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(health.status(), 200, "still serving HTTPS");
    assert_eq!(server.count("select count(*) from account").await, 0);
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_handshake_is_closed_while_others_are_served() {
    let pki = Pki::new("slow");
    let server = start_https(&pki, &["--header-timeout", "2"]).await;
    let address = ("127.0.0.1", port_of(&server.url));

    // Fifty connections that say nothing, and one that starts a TLS record and stops.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(address).await.unwrap());
    }
    let mut stalled = TcpStream::connect(address).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();

    // Meanwhile, HTTPS requests on fresh connections are answered.
    let client = pki.http_client();
    for _ in 0..5 {
        let health = client.get(format!("{}/healthz", server.url)).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }

    let patience = Duration::from_secs(30);
    assert!(closed_by_server(&mut stalled, patience).await.is_some(), "a handshake cut short stayed open");
    for connection in &mut silent {
        assert!(closed_by_server(connection, patience).await.is_some(), "a silent connection stayed open");
    }
    let health = client.get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn sighup_presents_a_renewed_certificate_and_a_broken_renewal_changes_nothing() {
    let old = Pki::new("old");
    // A data directory with a log file: the server writes its log there.
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::write(data_dir.path().join("server.log"), "").unwrap();
    let database_url = wasmgrid_server::database::test_cluster::fresh_database_url().await;
    let tls_args = old.server_args();
    let args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let server = Server::start_in(data_dir, database_url, &args).await;
    assert_eq!(old.http_client().get(format!("{}/healthz", server.url)).send().await.unwrap().status(), 200);

    // A certificate from another authority, written over the files the server reads.
    let renewed = Pki::new("renewed");
    for name in ["cert.pem", "key.pem"] {
        std::fs::copy(renewed.path(name), old.path(name)).unwrap();
    }
    server.send(libc::SIGHUP);
    let give_up = Instant::now() + TIMEOUT;
    while renewed.http_client().get(format!("{}/healthz", server.url)).send().await.is_err() {
        assert!(Instant::now() < give_up, "the renewed certificate was never presented");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(old.http_client().get(format!("{}/healthz", server.url)).send().await.is_err(), "the old one is gone");

    // A key that does not match: the renewed certificate stays.
    std::fs::write(old.path("key.pem"), rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    server.send(libc::SIGHUP);
    while !server.log().contains("keeping the TLS certificate in force") {
        assert!(Instant::now() < give_up, "no word of the broken renewal: {}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.log().contains("is not the key of the certificate"), "{}", server.log());
    let health = renewed.http_client().get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(server.pid().is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()), "SIGHUP did not stop it");
}

#[tokio::test]
async fn a_missing_or_mismatched_tls_file_stops_the_server_with_its_name() {
    let pki = Pki::new("broken");
    let other_key = pki.path("other-key.pem");
    std::fs::write(&other_key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let cases = [
        (pki.path("missing.pem"), pki.path("key.pem"), "cannot read the TLS certificate"),
        (pki.path("cert.pem"), pki.path("missing.pem"), "cannot read the TLS key"),
        (pki.path("cert.pem"), other_key.clone(), "is not the key of the certificate in"),
        (pki.path("key.pem"), pki.path("key.pem"), "holds no certificate"),
    ];
    for (certificate, key, expected) in cases {
        let output = tokio::process::Command::new(binary("wasmgrid-server"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&certificate)
            .arg("--tls-key")
            .arg(&key)
            .arg("--data-dir")
            .arg(data_dir.path())
            .env_remove("DATABASE_URL")
            .output()
            .await
            .unwrap();
        assert!(!output.status.success());
        let error = stderr(&output);
        assert!(error.contains(expected), "{error}");
        assert!(error.contains(&certificate.display().to_string()) || error.contains(&key.display().to_string()));
    }
    assert_eq!(std::fs::read_dir(data_dir.path()).unwrap().count(), 0, "refused before starting a database");
}
