//! The web site in a real browser: Debian's Chromium, headless, loads the pages the real
//! server renders for real volunteers' work.
//!
//! The server's own tests check the HTML it writes; only a browser shows what a visitor
//! gets: the document the HTML parser builds from that markup (a name escaped wrongly turns
//! into an element there), whether anything in it runs, and what the pages look like (the
//! screenshots are kept under `target/test-artifacts/`).
//!
//! Chromium is driven through its command-line modes, `--dump-dom` (the document after it
//! loaded and ran its scripts, serialized) and `--screenshot`, each run with a fresh
//! profile: no WebDriver, nothing to download. When Chromium is missing, the tests fail and
//! say how to install it; they never pass without a browser.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;
use wasmgrid_e2e::webdriver::{CHROMIUM_FLAGS, WINDOW_SIZE};
use wasmgrid_server::publishing::ReplicationPolicy;

use crate::harness::{Server, Volunteer, test_artifact_dir, workunit};

const TIMEOUT: Duration = Duration::from_secs(120);
const CREDIT_APPLIED: &str = "select count(*) from credit_grant where applied";

#[tokio::test]
async fn the_leaderboard_and_status_pages_render_in_a_browser() {
    let chromium = Chromium::find();
    let server = Server::start().await;
    let quorum_of_two = ReplicationPolicy { min_quorum: 2, target_replicas: 2, ..ReplicationPolicy::default() };
    let work_units = server.publish(&workunit("probes/determinism.wat"), 12, quorum_of_two).await;
    let volunteers = ["ada", "grace"];
    let ada = Volunteer::attach(&server, volunteers[0]).await;
    let grace = Volunteer::attach(&server, volunteers[1]).await;
    tokio::join!(ada.run_until_idle(TIMEOUT), grace.run_until_idle(TIMEOUT));
    server.wait_for_count(CREDIT_APPLIED, 2 * work_units.len() as i64, TIMEOUT).await;

    let users = chromium.dump_dom(&format!("{}/users", server.url)).await;
    let hosts = chromium.dump_dom(&format!("{}/hosts", server.url)).await;
    for name in volunteers {
        let (account_id, account_credit): (i64, f64) =
            sqlx::query_as("select id, total_credit from account where name = $1")
                .bind(name)
                .fetch_one(&server.pool)
                .await
                .unwrap();
        let (host_id, host_credit): (i64, f64) =
            sqlx::query_as("select id, total_credit from host where account_id = $1")
                .bind(account_id)
                .fetch_one(&server.pool)
                .await
                .unwrap();
        assert_ne!(credit(account_credit), "0.00", "{name} earned credit that shows on a page");

        let row = table_row_containing(&users, &format!(r#"href="/users/{account_id}""#));
        assert!(row.contains(&format!(">{name}<")), "{name} on /users: {row}");
        assert!(row.contains(&format!(">{}<", credit(account_credit))), "{name}'s credit on /users: {row}");
        let row = table_row_containing(&hosts, &format!(r#"href="/hosts/{host_id}""#));
        assert!(row.contains(&format!(">{name}<")), "{name}'s host on /hosts: {row}");
        assert!(row.contains(&format!(">{}<", credit(host_credit))), "{name}'s host's credit on /hosts: {row}");

        let user_page = chromium.dump_dom(&format!("{}/users/{account_id}", server.url)).await;
        assert!(title(&user_page).contains(name), "the title of {name}'s page: {}", title(&user_page));
        assert!(user_page.contains(&format!(">{}<", credit(account_credit))), "{name}'s credit: {user_page}");
        assert!(user_page.contains(&format!(r#"href="/hosts/{host_id}""#)), "{name}'s host: {user_page}");
    }

    let status = chromium.dump_dom(&format!("{}/status", server.url)).await;
    let chart = element(&status, "svg").unwrap_or_else(|| panic!("no chart on /status: {status}"));
    assert!(chart.contains("<rect"), "the chart has a bar for the replicas just reported: {chart}");

    let artifacts = test_artifact_dir();
    for (path, file) in [("/users", "leaderboard.png"), ("/status", "status.png")] {
        let screenshot = artifacts.join(file);
        chromium.screenshot(&format!("{}{path}", server.url), &screenshot).await;
        let png = std::fs::read(&screenshot).unwrap();
        assert!(
            png.starts_with(PNG_SIGNATURE) && png.len() > PNG_SIGNATURE.len(),
            "{} is no PNG",
            screenshot.display()
        );
    }
}

/// Payloads that run `document.title='pwned'` if a page pastes them in unescaped: as an
/// element, by breaking out of a double- or single-quoted attribute, and out of the title.
const HOSTILE_VOLUNTEER_NAMES: [&str; 3] = [
    "<script>document.title='pwned'</script>",
    r#""><img src=x onerror="document.title='pwned'">"#,
    "'><svg onload=document.title='pwned'>",
];
const HOSTILE_HOST_NAME: &str = "</title><script>document.title='pwned'</script>";
const HOSTILE_TEAM_NAME: &str = r#"<iframe srcdoc="<script>parent.document.title='pwned'</script>"></iframe>"#;

#[tokio::test]
async fn hostile_names_do_not_run_in_the_browser() {
    let chromium = Chromium::find();
    let server = Server::start().await;
    for name in HOSTILE_VOLUNTEER_NAMES {
        Volunteer::attach(&server, name).await;
    }
    let accounts: Vec<i64> =
        sqlx::query_scalar("select id from account order by id").fetch_all(&server.pool).await.unwrap();
    let host: i64 = sqlx::query_scalar("update host set name = $1 where account_id = $2 returning id")
        .bind(HOSTILE_HOST_NAME)
        .bind(accounts[0])
        .fetch_one(&server.pool)
        .await
        .unwrap();
    let team: i64 = sqlx::query_scalar("insert into team (name) values ($1) returning id")
        .bind(HOSTILE_TEAM_NAME)
        .fetch_one(&server.pool)
        .await
        .unwrap();
    sqlx::query("update account set team_id = $1").bind(team).execute(&server.pool).await.unwrap();

    let [first, second, third] = HOSTILE_VOLUNTEER_NAMES;
    let pages: [(String, Vec<&str>); 6] = [
        ("/users".into(), vec![first, second, third, HOSTILE_TEAM_NAME]),
        ("/hosts".into(), vec![HOSTILE_HOST_NAME, first, second, third]),
        ("/teams".into(), vec![HOSTILE_TEAM_NAME]),
        (format!("/teams/{team}"), vec![HOSTILE_TEAM_NAME, first, second, third]),
        (format!("/users/{}", accounts[0]), vec![first, HOSTILE_TEAM_NAME, HOSTILE_HOST_NAME]),
        (format!("/hosts/{host}"), vec![HOSTILE_HOST_NAME, first]),
    ];
    for (path, shown_names) in pages {
        let dom = chromium.dump_dom(&format!("{}{path}", server.url)).await;
        assert_eq!(injections(&dom), Vec::<String>::new(), "on {path}: {dom}");
        for name in shown_names {
            assert!(dom.contains(&as_text(name)), "{path} shows {name:?} as text: {dom}");
        }
    }
}

/// The hostile test's own check, on a page that pastes the names in unescaped, with no
/// Content-Security-Policy to stop them: it must see every payload.
#[tokio::test]
async fn the_checks_see_names_pasted_in_unescaped() {
    let chromium = Chromium::find();
    let dir = tempfile::tempdir().unwrap();
    let payloads = HOSTILE_VOLUNTEER_NAMES.into_iter().chain([HOSTILE_HOST_NAME, HOSTILE_TEAM_NAME]);
    for (i, payload) in payloads.enumerate() {
        let page = dir.path().join(format!("{i}.html"));
        let html = format!(
            "<!doctype html><title>{payload} · wasmgrid</title>\
             <table><tr><td><a href=\"/users/1\" title=\"{payload}\">{payload}</a></td></tr></table>\
             <p title='{payload}'>{payload}</p>"
        );
        std::fs::write(&page, html).unwrap();
        let dom = chromium.dump_dom(&format!("file://{}", page.display())).await;
        assert_ne!(injections(&dom), Vec::<String>::new(), "{payload:?} went unseen: {dom}");
    }
}

/// What names pasted into a page unescaped have done to its document: a payload that ran
/// (the title it sets), or the markup a payload adds. The site has no scripts and no
/// frames, and none of its elements has an event handler or an attribute named after the
/// payloads' `pwned`. Attribute values do not count: a name may be shown in one, escaped.
fn injections(dom: &str) -> Vec<String> {
    let mut found = Vec::new();
    if title(dom) == "pwned" {
        found.push("a script ran: the title is pwned".to_owned());
    }
    for tag in tags(dom) {
        let names = element_and_attribute_names(tag);
        let injected_element = matches!(names.first().map(String::as_str), Some("script" | "iframe"));
        let injected_attribute = names.iter().skip(1).any(|name| name.contains("pwned") || is_event_handler(name));
        if injected_element || injected_attribute {
            found.push(format!("markup from a name: <{tag}>"));
        }
    }
    found
}

/// Headless Chromium, one fresh profile per run.
struct Chromium {
    binary: PathBuf,
}

const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

impl Chromium {
    /// Debian's `chromium`, on the `PATH` or in `/usr/bin`; panics with how to install it.
    fn find() -> Self {
        let on_path = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).map(|dir| dir.join("chromium")).collect::<Vec<_>>())
            .unwrap_or_default();
        let binary = on_path.into_iter().chain([PathBuf::from("/usr/bin/chromium")]).find(|path| path.is_file());
        let binary = binary.unwrap_or_else(|| {
            panic!(
                "the browser tests need Chromium, which is missing: install it with \
                 `apt-get install chromium` (as root; .ci/run does it)"
            )
        });
        Self { binary }
    }

    /// The document at `url` once it has loaded, serialized as HTML.
    async fn dump_dom(&self, url: &str) -> String {
        let output = self.run(&["--dump-dom".into(), url.into()]).await;
        String::from_utf8(output.stdout).expect("Chromium dumps UTF-8")
    }

    /// Writes a PNG of the page at `url` to `path`.
    async fn screenshot(&self, url: &str, path: &Path) {
        let mut screenshot = OsString::from("--screenshot=");
        screenshot.push(path);
        self.run(&[screenshot, WINDOW_SIZE.into(), url.into()]).await;
    }

    /// Runs Chromium with `args`; panics if it fails or takes longer than
    /// [`CHROMIUM_TIMEOUT`], killing it and its helper processes.
    async fn run(&self, args: &[OsString]) -> Output {
        let profile = tempfile::tempdir().unwrap();
        let mut user_data_dir = OsString::from("--user-data-dir=");
        user_data_dir.push(profile.path());
        let child = Command::new(&self.binary)
            .args(CHROMIUM_FLAGS)
            .arg(user_data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout ends the renderer and GPU
            // processes too, not only the browser.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("{} does not start: {error}", self.binary.display()));
        let process_group = child.id();
        match tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await {
            Ok(output) => {
                let output = output.unwrap();
                assert!(
                    output.status.success(),
                    "chromium {args:?} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                output
            }
            Err(_) => {
                if let Some(group) = process_group {
                    // SAFETY: signalling the process group of our own child.
                    unsafe { libc::kill(-(group as libc::pid_t), libc::SIGKILL) };
                }
                panic!("chromium {args:?} took longer than {CHROMIUM_TIMEOUT:?}");
            }
        }
    }
}

/// Credit as the pages show it, written independently of the server's formatting: two
/// decimals, thousands separated by commas.
fn credit(value: f64) -> String {
    let fixed = format!("{value:.2}");
    let (whole, decimals) = fixed.split_once('.').unwrap();
    let digits: Vec<char> = whole.chars().collect();
    let groups: Vec<String> = digits.rchunks(3).rev().map(|group| group.iter().collect()).collect();
    format!("{}.{decimals}", groups.join(","))
}

/// `text` as a text node of a dumped document: `&`, `<`, `>` and no-break spaces escaped,
/// quotes as they are.
fn as_text(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\u{a0}', "&nbsp;")
}

/// The document's title, unescaped.
fn title(dom: &str) -> String {
    let start = dom.find("<title>").map(|at| at + "<title>".len());
    let escaped = start.and_then(|start| Some(&dom[start..start + dom[start..].find("</title>")?]));
    let escaped = escaped.unwrap_or_else(|| panic!("a page without a title: {dom}"));
    escaped.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", "\u{a0}").replace("&amp;", "&")
}

/// The first `<name ...>...</name>` element, without nesting of its own kind.
fn element<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<{name}"))?;
    let close = format!("</{name}>");
    let end = start + dom[start..].find(&close)? + close.len();
    Some(&dom[start..end])
}

/// The table row around the first occurrence of `needle`.
fn table_row_containing<'a>(dom: &'a str, needle: &str) -> &'a str {
    let found = dom.find(needle).unwrap_or_else(|| panic!("{needle} is not on the page: {dom}"));
    let start = dom[..found].rfind("<tr").expect("a row around it");
    let end = found + dom[found..].find("</tr>").expect("the row's end") + "</tr>".len();
    &dom[start..end]
}

/// Every tag of a dumped document, without its angle brackets. Text never contains a `<`
/// (it is escaped), so each one starts a tag.
fn tags(dom: &str) -> impl Iterator<Item = &str> {
    dom.split('<').skip(1).map(|rest| rest.split_once('>').map_or(rest, |(tag, _)| tag))
}

/// A tag's element name and its attributes' names, in lower case, without the values
/// (Chromium writes every value in double quotes, and any `"` in it as `&quot;`).
fn element_and_attribute_names(tag: &str) -> Vec<String> {
    let outside_values: Vec<&str> = tag.split('"').step_by(2).collect();
    outside_values
        .join(" ")
        .split_ascii_whitespace()
        .filter_map(|word| word.split('=').next().filter(|name| !name.is_empty()))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// `onerror`, `onload`, `onmouseover`...
fn is_event_handler(attribute: &str) -> bool {
    attribute.len() > 2 && attribute.starts_with("on") && attribute.chars().all(|c| c.is_ascii_alphabetic())
}

#[test]
fn credit_is_written_like_the_pages_write_it() {
    assert_eq!(credit(0.004), "0.00");
    assert_eq!(credit(999.999), "1,000.00");
    assert_eq!(credit(1234567.891), "1,234,567.89");
}
