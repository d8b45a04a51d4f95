//! Accounts and hosts are free to make, so each address may make only a few at a time.

use reqwest::StatusCode;
use wasmgrid_protocol::api::{CreateAccountRequest, RegisterHostRequest};
use wasmgrid_server::http::visitor::parse_network;

use super::helpers::TestApp;

/// A server behind a trusted proxy on this machine, so that each request can say which
/// address it comes from.
async fn behind_a_proxy(accounts_per_address: i64, hosts_per_address: i64) -> TestApp {
    TestApp::spawn_with(|config| {
        config.site.trusted_proxies = vec![parse_network("127.0.0.1").unwrap()];
        config.registration.accounts_per_address = accounts_per_address;
        config.registration.hosts_per_address = hosts_per_address;
    })
    .await
}

async fn create_account_from(app: &TestApp, address: &str, name: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/v1/accounts", app.client.base_url()))
        .header("x-forwarded-for", address)
        .json(&CreateAccountRequest { name: name.into() })
        .send()
        .await
        .unwrap()
}

fn host(name: &str) -> RegisterHostRequest {
    RegisterHostRequest {
        name: name.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 4,
        memory_bytes: 8 << 30,
        client_version: "test".into(),
    }
}

#[tokio::test]
async fn accounts_created_over_the_api_are_limited_per_address() {
    let app = behind_a_proxy(3, 100).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(create_account_from(&app, "198.51.100.7", &format!("bulk-{i}")).await.status());
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
    let refused = create_account_from(&app, "198.51.100.7", "one more").await;
    assert_eq!(refused.headers()["retry-after"], "900");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");

    // Another address has its own count; an IPv6 address counts by its /64.
    assert_eq!(create_account_from(&app, "203.0.113.9", "elsewhere").await.status(), StatusCode::CREATED);
    for i in 0..3 {
        let address = format!("2001:db8:7:7::{i}");
        assert_eq!(create_account_from(&app, &address, &format!("v6-{i}")).await.status(), StatusCode::CREATED);
    }
    assert_eq!(create_account_from(&app, "2001:db8:7:7:ffff::1", "v6-more").await.status(), 429);
    assert_eq!(app.count("select count(*) from account").await, 7, "refused attempts create nothing");
}

#[tokio::test]
async fn concurrent_account_creation_stays_within_the_limit() {
    let app = behind_a_proxy(4, 100).await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let base = app.client.base_url().to_owned();
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("{base}/api/v1/accounts"))
                    .header("x-forwarded-for", "198.51.100.8")
                    .json(&CreateAccountRequest { name: format!("at-once-{i}") })
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut created = 0;
    for request in requests {
        if request.await.unwrap() == StatusCode::CREATED {
            created += 1;
        }
    }
    // Each attempt is counted before it is checked, so attempts at once may refuse each
    // other, but never let more than the limit through.
    assert!(created <= 4, "{created} accounts created at once");
    assert_eq!(app.count("select count(*) from account").await, created);
    // Refused attempts left no trace: the address may still fill its share, and no more.
    for i in 0..6 {
        let _ = create_account_from(&app, "198.51.100.8", &format!("later-{i}")).await;
    }
    assert_eq!(app.count("select count(*) from account").await, 4);
}

#[tokio::test]
async fn hosts_registered_from_one_address_are_limited() {
    let app = TestApp::spawn_with(|config| config.registration.hosts_per_address = 2).await;
    let account = app.client.create_account("farm").await.unwrap();
    for i in 0..2 {
        app.client.register_host(&account.account_key, &host(&format!("node-{i}"))).await.unwrap();
    }
    let refused = app.client.register_host(&account.account_key, &host("node-2")).await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(app.count("select count(*) from host").await, 2);
}
