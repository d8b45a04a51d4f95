//! A volunteer's whole way through the web site, in a real browser: sign up, copy the
//! attach command the page shows and run it, found or join a team, let the machine work,
//! then find one's credit on the leaderboards, log out and log back in.
//!
//! Each step is a page's own form submitted by clicking its button in headless Chromium,
//! driven over WebDriver (see `wasmgrid_e2e::webdriver`), so what is tested is what a
//! volunteer does: the markup, the cookies (session and CSRF) the browser keeps between
//! pages, the redirects after each form, and the command that the account page hands to
//! the `wasmgrid` binary. The server's own tests post forms without a browser, and
//! `browser.rs` only looks at pages; neither would notice a form the browser cannot submit
//! or an attach command that does not attach. The credit the pages show is compared with
//! the database, after real Wasm work was validated by a quorum of two machines.
//!
//! Screenshots of the pages the volunteer looks at are kept under `target/test-artifacts/`.
//! When `chromedriver` or Chromium is missing, the test fails and says how to install
//! them; it never passes without a browser.

use std::time::Duration;

use wasmgrid_e2e::webdriver::{ChromeDriver, Session};
use wasmgrid_server::publishing::ReplicationPolicy;
use wasmgrid_server::web::format::credit;

use crate::harness::{Server, Volunteer, test_artifact_dir, workunit};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const CREDIT_APPLIED: &str = "select count(*) from credit_grant where applied";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Someone signing up on the web site.
pub struct Visitor {
    pub name: &'static str,
    pub email: &'static str,
    pub password: &'static str,
}

pub const ADA: Visitor = Visitor { name: "ada", email: "ada@example.org", password: "analytical engine 1843" };
const GRACE: Visitor = Visitor { name: "grace", email: "grace@example.org", password: "compiler A-0 in 1952" };
const TEAM: &str = "Difference Engineers";
/// What a failed log-in says, whether the account exists or not.
const LOGIN_FAILED: &str = "wrong name, email or password";

#[tokio::test]
async fn a_volunteer_signs_up_attaches_joins_a_team_and_finds_their_credit_in_the_browser() {
    let driver = ChromeDriver::start().await;
    let server = Server::start().await;

    // Two volunteers, each in a browser of their own, sign up and attach a machine with
    // the command their account page shows.
    let ada_browser = driver.new_session().await;
    let grace_browser = driver.new_session().await;
    let ada_machine = Volunteer::unattached();
    let grace_machine = Volunteer::unattached();
    let ada_command = sign_up(&ada_browser, &server, &ADA).await;
    let grace_command = sign_up(&grace_browser, &server, &GRACE).await;
    run_attach_command(&ada_machine, &server, &ada_command).await;
    run_attach_command(&grace_machine, &server, &grace_command).await;

    // Ada founds a team on her account page; Grace joins it from the team's page. Both
    // before any work is done: a team earns only what its members earn as members.
    let team_id = found_team(&ada_browser, &server, TEAM).await;
    let grace_id = account_id(&server, GRACE.name).await;
    join_team(&grace_browser, &server, team_id, grace_id).await;

    // Work that both machines must do and agree on before anybody earns credit.
    let quorum_of_two = ReplicationPolicy { min_quorum: 2, target_replicas: 2, ..ReplicationPolicy::default() };
    let work_units = server.publish(&workunit("probes/determinism.wat"), 6, quorum_of_two).await;
    tokio::join!(ada_machine.run_until_idle(RUN_TIMEOUT), grace_machine.run_until_idle(RUN_TIMEOUT));
    server.wait_for_count(CREDIT_APPLIED, 2 * work_units.len() as i64, RUN_TIMEOUT).await;

    let ada = Credit::of(&server, ADA.name).await;
    let grace = Credit::of(&server, GRACE.name).await;
    let team_credit: f64 = sqlx::query_scalar("select total_credit from team where id = $1")
        .bind(team_id)
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_ne!(credit(ada.account), "0.00", "Ada earned credit that shows on the pages");
    assert!(
        (team_credit - (ada.account + grace.account)).abs() < 1e-6,
        "the team earned what its two members earned: {team_credit} vs {} + {}",
        ada.account,
        grace.account
    );
    assert_ne!(credit(team_credit), "0.00", "the team earned credit that shows on the pages");

    let browser = &ada_browser;
    browser.goto(&format!("{}/users", server.url)).await;
    let row = browser.table_row_linking_to(&format!("/users/{}", ada.account_id)).await;
    assert_eq!(row["Name"], ADA.name, "Ada's row on /users: {row:?}");
    assert_eq!(row["Team"], TEAM, "Ada's row on /users: {row:?}");
    assert_eq!(row["Total credit"], credit(ada.account), "Ada's row on /users: {row:?}");
    keep_screenshot(browser, "flow-users.png").await;

    browser.goto(&format!("{}/hosts", server.url)).await;
    let row = browser.table_row_linking_to(&format!("/hosts/{}", ada.host_id)).await;
    assert_eq!(row["Name"], ada.host_name, "Ada's host's row on /hosts: {row:?}");
    assert_eq!(row["Owner"], ADA.name, "Ada's host's row on /hosts: {row:?}");
    assert_eq!(row["Total credit"], credit(ada.host), "Ada's host's row on /hosts: {row:?}");

    browser.goto(&format!("{}/users/{}", server.url, ada.account_id)).await;
    let totals = browser.definitions("dl.totals").await;
    assert_eq!(totals["Total credit"], credit(ada.account), "on Ada's page: {totals:?}");
    assert_eq!(totals["Team"], TEAM, "on Ada's page: {totals:?}");
    let row = browser.table_row_linking_to(&format!("/hosts/{}", ada.host_id)).await;
    assert_eq!(row["Host"], ada.host_name, "Ada's page lists her host: {row:?}");
    assert_eq!(row["Total credit"], credit(ada.host), "Ada's page lists her host: {row:?}");
    // Today's bar and the line of her total in the chart of her credit over time.
    browser.find("figure.chart svg rect").await;
    browser.find("figure.chart svg polyline").await;
    keep_screenshot(browser, "flow-user.png").await;

    browser.goto(&format!("{}/teams/{team_id}", server.url)).await;
    let totals = browser.definitions("dl.totals").await;
    assert_eq!(totals["Total credit"], credit(team_credit), "on the team's page: {totals:?}");
    assert_eq!(totals["Members"], "2", "on the team's page: {totals:?}");
    for member in [&ada, &grace] {
        let row = browser.table_row_linking_to(&format!("/users/{}", member.account_id)).await;
        assert_eq!(row["Total credit"], credit(member.account), "a member's row on the team's page: {row:?}");
    }
    browser.find("figure.chart svg rect").await;
    keep_screenshot(browser, "flow-team.png").await;

    browser.goto(&format!("{}/teams", server.url)).await;
    let row = browser.table_row_linking_to(&format!("/teams/{team_id}")).await;
    assert_eq!(row["Name"], TEAM, "the team's row on /teams: {row:?}");
    assert_eq!(row["Total credit"], credit(team_credit), "the team's row on /teams: {row:?}");

    browser.goto(&format!("{}/status", server.url)).await;
    // A bar for the replicas just reported, drawn where a browser shows it.
    browser.find("figure.chart svg rect").await;
    keep_screenshot(browser, "flow-status.png").await;

    log_out(browser, &server).await;
    assert_eq!(log_in(browser, &server, ADA.email, "not the password").await, Err(LOGIN_FAILED.to_owned()));
    assert_eq!(
        log_in(browser, &server, "nobody", ADA.password).await,
        Err(LOGIN_FAILED.to_owned()),
        "an unknown name fails the same way as a wrong password"
    );
    assert_eq!(log_in(browser, &server, ADA.email, ADA.password).await, Ok(()));
    let totals = browser.definitions("dl.totals").await;
    assert_eq!(browser.find("h1").await.text().await, ADA.name, "signed in as Ada again");
    assert_eq!(totals["Total credit"], credit(ada.account), "on Ada's account page: {totals:?}");

    ada_browser.quit().await;
    grace_browser.quit().await;
}

/// Signs `visitor` up with the sign-up form; returns the attach command the page shows.
pub async fn sign_up(browser: &Session, server: &Server, visitor: &Visitor) -> String {
    browser.goto(&format!("{}/signup", server.url)).await;
    let form = r#"form[action="/signup"]"#;
    browser.find(&format!(r#"{form} input[name="name"]"#)).await.send_keys(visitor.name).await;
    browser.find(&format!(r#"{form} input[name="email"]"#)).await.send_keys(visitor.email).await;
    browser.find(&format!(r#"{form} input[name="password"]"#)).await.send_keys(visitor.password).await;
    browser.find(&format!(r#"{form} button[type="submit"]"#)).await.click().await;
    // The account page, with the new account's key, follows the sign-up.
    browser.find("#attach-command").await.text().await
}

/// Runs the attach command as the volunteer would paste it into a shell, with the
/// `wasmgrid` binary this build made.
async fn run_attach_command(machine: &Volunteer, server: &Server, attach_command: &str) {
    let words: Vec<&str> = attach_command.split_whitespace().collect();
    assert!(
        words.len() > 3 && words[..3] == ["wasmgrid", "attach", server.url.as_str()],
        "the account page tells the volunteer to attach to this server with the client: {attach_command:?}"
    );
    let output = machine.command(&words[1..]).output().await.unwrap();
    assert!(output.status.success(), "`{attach_command}` failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Founds the team `name` with the form on the account page; returns its id, from the
/// address of the team's page the browser is sent to.
async fn found_team(browser: &Session, server: &Server, name: &str) -> i64 {
    browser.goto(&format!("{}/account", server.url)).await;
    let form = r#"form[action="/teams"]"#;
    browser.find(&format!(r#"{form} input[name="name"]"#)).await.send_keys(name).await;
    browser.find(&format!(r#"{form} button[type="submit"]"#)).await.click().await;
    let team_page =
        browser.wait_for_path("the new team's page", |path| path.strip_prefix("/teams/").is_some_and(is_id)).await;
    assert_eq!(browser.find("h1").await.text().await, name, "the team's page");
    team_page["/teams/".len()..].parse().unwrap()
}

/// Joins team `team_id` with the button on its page, and waits for the page to list the
/// new member, `account_id`.
async fn join_team(browser: &Session, server: &Server, team_id: i64, account_id: i64) {
    browser.goto(&format!("{}/teams/{team_id}", server.url)).await;
    let join_form = format!(r#"form[action="/teams/{team_id}/join"]"#);
    let button = browser.find(&format!("{join_form} button")).await;
    assert_eq!(button.text().await, "Join this team");
    button.click().await;
    browser.table_row_linking_to(&format!("/users/{account_id}")).await;
    assert!(browser.find_all(&join_form).await.is_empty(), "no join button for a member");
}

/// Logs out with the account page's button, and checks that the account page is no
/// longer shown to this browser.
async fn log_out(browser: &Session, server: &Server) {
    browser.goto(&format!("{}/account", server.url)).await;
    browser.find(r#"form[action="/logout"] button[type="submit"]"#).await.click().await;
    browser.wait_for_path("the home page after logging out", |path| path == "/").await;
    browser.goto(&format!("{}/account", server.url)).await;
    browser.wait_for_path("the log-in page instead of the account", |path| path == "/login").await;
}

/// Logs in with the log-in form; on failure, returns the message the page shows.
async fn log_in(browser: &Session, server: &Server, login: &str, password: &str) -> Result<(), String> {
    browser.goto(&format!("{}/login", server.url)).await;
    let form = r#"form[action="/login"]"#;
    browser.find(&format!(r#"{form} input[name="login"]"#)).await.send_keys(login).await;
    browser.find(&format!(r#"{form} input[name="password"]"#)).await.send_keys(password).await;
    browser.find(&format!(r#"{form} button[type="submit"]"#)).await.click().await;
    // Either the account page (the log-in redirects there) or the form again, with an
    // alert saying why.
    browser
        .wait_for("the account page or an alert", async || {
            if browser.current_url().await.ends_with("/account") {
                return Some(Ok(()));
            }
            let alert = browser.find_all(r#"p.error[role="alert"]"#).await.into_iter().next()?;
            Some(Err(alert.text().await))
        })
        .await
}

/// An account's credit and its one host's, as the database holds them.
struct Credit {
    account_id: i64,
    account: f64,
    host_id: i64,
    host_name: String,
    host: f64,
}

impl Credit {
    /// Of the account named `name`, which must have exactly one host: the machine that the
    /// attach command from its sign-up attached.
    async fn of(server: &Server, name: &str) -> Self {
        let rows: Vec<(i64, f64, i64, String, f64)> = sqlx::query_as(
            "select a.id, a.total_credit, h.id, h.name, h.total_credit
             from account a join host h on h.account_id = a.id where a.name = $1",
        )
        .bind(name)
        .fetch_all(&server.pool)
        .await
        .unwrap();
        let [(account_id, account, host_id, host_name, host)] =
            <[_; 1]>::try_from(rows).unwrap_or_else(|rows| panic!("{name}'s account has one host, not {}", rows.len()));
        Self { account_id, account, host_id, host_name, host }
    }
}

async fn account_id(server: &Server, name: &str) -> i64 {
    sqlx::query_scalar("select id from account where name = $1").bind(name).fetch_one(&server.pool).await.unwrap()
}

fn is_id(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// Saves a screenshot of what the browser shows as `file` among the test artifacts.
pub async fn keep_screenshot(browser: &Session, file: &str) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(PNG_SIGNATURE) && png.len() > PNG_SIGNATURE.len(), "the screenshot {file} is a PNG");
    let path = test_artifact_dir().join(file);
    std::fs::write(&path, png).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
}
