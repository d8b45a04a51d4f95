//! `/contribute`, the page that makes a browser tab a volunteer host: the one page allowed to
//! run scripts (its own, from the binary), how a tab registers its host, and the short
//! deadline a tab gets.

use std::time::Duration;

use reqwest::Method;
use wasmgrid_protocol::api::{RegisterHostRequest, RegisterHostResponse, RunLimits};
use wasmgrid_server::publishing::WorkUnitSpec;

use crate::helpers::{Browser, Page, TestApp, Volunteer, policy};

const PASSWORD: &str = "correct horse battery";

/// What a tab says of itself when it registers.
fn tab() -> RegisterHostRequest {
    RegisterHostRequest {
        name: "Chromium 156 on Linux".into(),
        os: "Linux".into(),
        arch: "x86_64".into(),
        cores: 2,
        memory_bytes: 4 << 30,
        client_version: "wasmgrid-web (instrumentation 2; Chromium 156)".into(),
    }
}

/// The CSRF token the contribute page hands its script.
fn page_token(page: &Page) -> String {
    let start = page.body.find(r#"data-csrf=""#).expect("the page carries its token") + 11;
    page.body[start..].split('"').next().unwrap().to_owned()
}

/// Registers a tab's host as the page's script does when no one is signed in: JSON, with the
/// page's token in a header.
async fn register(browser: &mut Browser, token: &str) -> Page {
    register_as(browser, token, "anonymous", None).await
}

/// Registers a tab's host for `account` (an id, or `anonymous`), with the anonymous account's
/// key if the browser has one.
async fn register_as(browser: &mut Browser, token: &str, account: &str, account_key: Option<&str>) -> Page {
    let mut request = browser
        .http()
        .post(format!("{}/contribute/hosts", browser.base()))
        .header("x-csrf-token", token)
        .header("x-wasmgrid-account", account)
        .json(&tab());
    if let Some(key) = account_key {
        request = request.bearer_auth(key);
    }
    browser.send(request).await
}

/// A tab's new host, as the server answers it.
#[derive(Debug, Clone, serde::Deserialize)]
struct BrowserHost {
    host_id: i64,
    account_id: i64,
    host_token: String,
    account_key: Option<String>,
}

impl From<BrowserHost> for RegisterHostResponse {
    fn from(host: BrowserHost) -> Self {
        Self { host_id: host.host_id, account_id: host.account_id, host_token: host.host_token }
    }
}

/// The tab's host, acting through the client library as the page's script does over HTTP.
fn as_volunteer(app: &TestApp, host: RegisterHostResponse) -> Volunteer {
    Volunteer {
        client: app.client.clone(),
        account_key: String::new(),
        account_id: host.account_id,
        host_id: host.host_id,
        token: host.host_token,
    }
}

fn header(page: &Page, name: &str) -> String {
    page.headers.get(name).map_or(String::new(), |value| value.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn only_the_contribute_page_may_run_scripts_and_it_is_cross_origin_isolated() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let page = browser.get("/contribute").await;
    assert_eq!(page.status, 200);
    let policy = header(&page, "content-security-policy");
    for allowed in
        ["default-src 'none'", "script-src 'self' 'wasm-unsafe-eval'", "worker-src 'self'", "connect-src 'self'"]
    {
        assert!(policy.contains(allowed), "{allowed} in {policy}");
    }
    assert!(!policy.contains("unsafe-inline") && !policy.contains("http") && !policy.contains('*'), "{policy}");
    assert_eq!(header(&page, "cross-origin-opener-policy"), "same-origin");
    assert_eq!(header(&page, "cross-origin-embedder-policy"), "require-corp");
    assert!(page.body.contains(r#"<script type="module" src="/static/contribute/page.js"></script>"#));

    for path in ["/", "/users", "/teams", "/hosts", "/status", "/login", "/signup", "/account", "/users/999"] {
        let page = browser.get(path).await;
        assert_eq!(
            header(&page, "content-security-policy"),
            wasmgrid_server::web::CONTENT_SECURITY_POLICY,
            "{path} runs no scripts"
        );
    }
}

#[tokio::test]
async fn the_pages_scripts_come_from_the_binary_and_a_worker_may_reach_nothing() {
    let app = TestApp::spawn().await;
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/static/contribute");
    for (file, content_type) in [
        ("page.js", "text/javascript; charset=utf-8"),
        ("task-worker.js", "text/javascript; charset=utf-8"),
        ("wasi.js", "text/javascript; charset=utf-8"),
        ("instrument.wasm", "application/wasm"),
    ] {
        let response = app.client.request(Method::GET, &format!("/static/contribute/{file}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{file}");
        assert_eq!(headers["content-security-policy"], "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'");
        assert_eq!(headers["cross-origin-embedder-policy"], "require-corp");
        assert_eq!(response.bytes().await.unwrap(), std::fs::read(directory.join(file)).unwrap(), "{file}");

        let etag = headers["etag"].to_str().unwrap();
        let again = app
            .client
            .request(Method::GET, &format!("/static/contribute/{file}"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file} unchanged");
    }
    for missing in ["nothing.js", "..%2F..%2FCargo.toml", "%2E%2E"] {
        let response = app.client.request(Method::GET, &format!("/static/contribute/{missing}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{missing}");
    }
}

#[tokio::test]
async fn a_tab_without_an_account_computes_for_an_anonymous_one() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let token = page_token(&browser.get("/contribute").await);
    let registered = register(&mut browser, &token).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let host: BrowserHost = serde_json::from_str(&registered.body).unwrap();
    let (kind, account_name): (String, String) =
        sqlx::query_as("select h.kind, a.name from host h join account a on a.id = h.account_id where h.id = $1")
            .bind(host.host_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(kind, "browser");
    assert!(account_name.starts_with("Anonymous browser volunteer "), "{account_name}");

    // The host's token is a host's token like any other: the tab fetches work with it.
    app.publish(1, policy(1, 1)).await;
    assert_eq!(as_volunteer(&app, host.clone().into()).fetch(1).await.len(), 1);
    // Its page says what it is.
    let page = browser.get(&format!("/hosts/{}", host.host_id)).await;
    assert!(page.body.contains("browser tab on Linux x86_64"), "{}", page.body);

    // The browser's next tab joins the anonymous account with its key; a key that is no
    // account's is refused, and the browser then makes a new one.
    let key = host.account_key.expect("a new anonymous account's key");
    let second: BrowserHost =
        serde_json::from_str(&register_as(&mut browser, &token, "anonymous", Some(&key)).await.body).unwrap();
    assert_eq!((second.account_id, second.account_key), (host.account_id, None));
    assert_eq!(register_as(&mut browser, &token, "anonymous", Some("wga_not-a-key")).await.status, 401);
    assert_eq!(app.count("select count(*) from account").await, 1);
}

#[tokio::test]
async fn a_signed_in_volunteers_tab_computes_for_their_account() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    assert_eq!(browser.sign_up("Ada", "ada@example.org", PASSWORD).await.status, 200);
    let page = browser.get("/contribute").await;
    assert!(page.body.contains("Signed in as"), "{}", page.body);
    let ada: i64 = sqlx::query_scalar("select id from account where name = 'Ada'").fetch_one(&app.pool).await.unwrap();
    let token = page_token(&page);
    assert_eq!(register(&mut browser, &token).await.status, 409, "the page was shown to Ada, not to nobody");
    let registered = register_as(&mut browser, &token, &ada.to_string(), None).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let host: BrowserHost = serde_json::from_str(&registered.body).unwrap();
    assert_eq!((host.account_id, host.account_key), (ada, None));
    assert_eq!(app.count("select count(*) from account").await, 1, "no anonymous account besides");

    // Signed out since the page was shown: the tab is told to reload, and no anonymous
    // account takes Ada's place.
    let csrf = browser.get("/account").await.csrf();
    browser.post("/logout", &[("csrf", &csrf)]).await;
    let stale = register_as(&mut browser, &token, &ada.to_string(), None).await;
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert_eq!(app.count("select count(*) from account").await, 1);
}

#[tokio::test]
async fn a_host_cannot_be_registered_for_a_tab_from_another_site() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let token = page_token(&browser.get("/contribute").await);
    // No token, another token, and the right token sent from another origin.
    assert_eq!(register(&mut browser, "").await.status, 403);
    assert_eq!(register(&mut browser, &format!("csrf_{}", "0".repeat(64))).await.status, 403);
    browser.extra.push(("origin", "https://evil.example".to_owned()));
    assert_eq!(register(&mut browser, &token).await.status, 403);
    assert_eq!(app.count("select count(*) from host").await, 0);
    assert_eq!(app.count("select count(*) from account").await, 0);
}

#[tokio::test]
async fn anonymous_tabs_count_against_the_addresss_sign_ups_even_sent_at_once() {
    let app = TestApp::spawn_with(|config| config.registration.accounts_per_address = 2).await;
    let mut browsers = Vec::new();
    for _ in 0..8 {
        let mut browser = Browser::new(&app);
        let token = page_token(&browser.get("/contribute").await);
        browsers.push((browser, token));
    }
    let statuses = futures::future::join_all(
        browsers.iter_mut().map(|(browser, token)| async move { register(browser, token).await.status }),
    )
    .await;
    // Attempts sent together may all be refused (each counts the others'), never more let in.
    let admitted = statuses.iter().filter(|status| **status == 201).count() as i64;
    assert!(admitted <= 2, "{statuses:?}");
    assert!(statuses.iter().all(|status| [201, 429].contains(status)), "{statuses:?}");
    assert_eq!(app.count("select count(*) from host").await, admitted);
    assert_eq!(app.count("select count(*) from account").await, admitted);
}

#[tokio::test]
async fn a_tab_must_report_within_the_wall_clock_limit_and_the_grace_a_native_host_within_the_deadline() {
    let app = TestApp::spawn_with(|config| config.scheduler.browser_grace = Duration::from_secs(60)).await;
    let limits = RunLimits { wall_time_seconds: 30, ..RunLimits::DEFAULT };
    let mut short_deadline = policy(1, 1);
    short_deadline.delay_bound = Duration::from_secs(45);
    let endless = RunLimits { wall_time_seconds: 1 << 62, ..limits };
    app.publish_specs(vec![
        WorkUnitSpec { policy: policy(2, 2), limits, ..WorkUnitSpec::new("week") },
        WorkUnitSpec { policy: short_deadline, limits, ..WorkUnitSpec::new("short") },
        WorkUnitSpec { policy: policy(1, 1), limits: endless, ..WorkUnitSpec::new("endless") },
    ])
    .await;
    let mut browser = Browser::new(&app);
    let token = page_token(&browser.get("/contribute").await);
    let host: BrowserHost = serde_json::from_str(&register(&mut browser, &token).await.body).unwrap();
    let tab = as_volunteer(&app, host.into());
    let native = app.volunteer("native").await;
    assert_eq!(tab.fetch(3).await.len(), 3);
    native.fetch(1).await;
    let deadlines: Vec<(String, String, f64)> = sqlx::query_as(
        "select w.name, h.kind, extract(epoch from r.deadline_at - r.sent_at)::float8
         from replica r join work_unit w on w.id = r.work_unit_id join host h on h.id = r.host_id
         order by w.name, h.kind",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        deadlines,
        [
            ("endless".to_owned(), "browser".to_owned(), 7.0 * 86_400.0),
            ("short".to_owned(), "browser".to_owned(), 45.0),
            ("week".to_owned(), "browser".to_owned(), 90.0),
            ("week".to_owned(), "native".to_owned(), 7.0 * 86_400.0),
        ],
        "a tab's deadline: the wall-clock limit and the grace, or the work unit's own if sooner (however long the limit)"
    );
}
