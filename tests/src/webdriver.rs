//! A small WebDriver client: Debian's headless Chromium, driven through `chromedriver` with
//! the W3C WebDriver protocol, for tests that fill in forms and follow what the site does.
//!
//! Why our own client rather than `fantoccini` or `thirtyfour`: the tests need a dozen
//! commands (open a session, go to a page, find elements by CSS selector, type, click, read
//! text and attributes, take a screenshot, close), and each is one JSON request over HTTP.
//! The workspace already speaks HTTP with `reqwest` (rustls, no OpenSSL), so this client adds
//! no HTTP stack, TLS choice or async runtime glue of its own, and each method below shows
//! the protocol command it sends, which is what one needs to know when a browser test fails.
//!
//! Like the rest of the test harness, it panics when something goes wrong, saying what it
//! was doing, so that a test reads as a list of steps. Finding an element waits for it (up
//! to [`WAIT`]): after a click the next page may still be loading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Where Debian's `chromedriver` and `chromium` packages put the programs.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Flags Chromium needs here, in every mode: no sandbox (tests may run as root), no GPU,
/// and nothing started besides the pages (first-run dialogs, updates, sync, background
/// requests).
pub const CHROMIUM_FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];
/// Large enough for a screenshot to show a whole leaderboard.
pub const WINDOW_SIZE: &str = "--window-size=1280,1600";

/// How long an element, a page or a condition may take to appear.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long `chromedriver` may take to say it is ready.
const STARTUP: Duration = Duration::from_secs(30);
/// How often conditions are checked while waiting.
const POLL: Duration = Duration::from_millis(100);
/// How many ports to try: another process may take the free port we picked before
/// `chromedriver` binds it.
const PORT_ATTEMPTS: usize = 5;

/// The key under which WebDriver names an element in its answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running `chromedriver`; dropping it kills it and every browser it started.
pub struct ChromeDriver {
    process: Child,
    url: String,
    http: reqwest::Client,
    log_dir: tempfile::TempDir,
}

impl ChromeDriver {
    /// Starts `chromedriver` on a free port of 127.0.0.1 and waits until it is ready.
    /// Panics, saying how to install them, when `chromedriver` or Chromium is missing.
    pub async fn start() -> Self {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).is_file(),
                "{program} is missing: the browser tests need Chromium and its WebDriver server; install \
                 them with `apt-get install chromium chromium-driver` (as root; .ci/run does it)"
            );
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("chromedriver.log");
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            // `chromedriver` has no `--port=0`: take a port the system calls free and hand
            // it over, retrying if someone else takes it in between.
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut process = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that dropping it ends the browsers too: they
                // outlive a killed `chromedriver` otherwise.
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|error| panic!("{CHROMEDRIVER} does not start: {error}"));
            let url = format!("http://127.0.0.1:{port}");
            match wait_until_ready(&http, &url, &mut process).await {
                Ok(()) => return Self { process, url, http, log_dir },
                Err(failure) => {
                    kill_process_group(&process);
                    failures.push(format!("port {port}: {failure}"));
                }
            }
        }
        panic!("chromedriver did not start: {failures:?}; its log: {}", read_log(&log));
    }

    /// A new browser with a fresh profile of its own (cookies included), so that two
    /// sessions are two unrelated visitors.
    pub async fn new_session(&self) -> Session {
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|arg| arg.to_string()).collect();
        args.push(WINDOW_SIZE.to_owned());
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }
            }
        });
        let created =
            send(&self.http, Method::POST, &format!("{}/session", self.url), Some(capabilities)).await.unwrap_or_else(
                |error| panic!("no browser session: {error}; chromedriver's log: {}", read_log(&self.log_path())),
            );
        let id = created["sessionId"].as_str().expect("a session id");
        Session { http: self.http.clone(), url: format!("{}/session/{id}", self.url), _profile: profile }
    }

    fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("chromedriver.log")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        kill_process_group(&self.process);
    }
}

/// Waits until `chromedriver` at `url` answers that it is ready for new sessions, or says
/// why not (it exited, say because the port was taken, or it took too long).
async fn wait_until_ready(http: &reqwest::Client, url: &str, process: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = process.try_wait().unwrap() {
            return Err(format!("it exited ({status})"));
        }
        if let Ok(status) = send(http, Method::GET, &format!("{url}/status"), None).await
            && status["ready"] == true
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {STARTUP:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn kill_process_group(process: &Child) {
    if let Some(group) = process.id() {
        // SAFETY: signalling the process group of our own child, which it leads.
        unsafe { libc::kill(-(group as libc::pid_t), libc::SIGKILL) };
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| format!("({}: {error})", path.display()))
}

/// What a WebDriver command answered instead of a value: its error code (`no such
/// element`...) and message.
#[derive(Debug)]
pub struct CommandError {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.error, self.message)
    }
}

/// Sends one WebDriver command; returns its `value`, or its error.
async fn send(http: &reqwest::Client, method: Method, url: &str, body: Option<Value>) -> Result<Value, CommandError> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let failed = |error: reqwest::Error| CommandError { error: "no answer".into(), message: error.to_string() };
    let response = request.send().await.map_err(failed)?;
    let status = response.status();
    let mut answer: Value = response.json().await.map_err(failed)?;
    let value = answer["value"].take();
    if status.is_success() {
        Ok(value)
    } else {
        Err(CommandError {
            error: value["error"].as_str().unwrap_or("unknown error").to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// One browser window. [`Session::quit`] closes it; otherwise it goes with its
/// [`ChromeDriver`].
pub struct Session {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`, which every command's path starts with.
    url: String,
    _profile: tempfile::TempDir,
}

impl Session {
    /// Sends a command of this session (`path` after `/session/ID`); panics on an error.
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_command(method.clone(), path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {method} {path}: {error}"))
    }

    async fn try_command(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CommandError> {
        send(&self.http, method, &format!("{}{path}", self.url), body).await
    }

    /// Loads `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn current_url(&self) -> String {
        self.command(Method::GET, "/url", None).await.as_str().expect("a URL").to_owned()
    }

    pub async fn title(&self) -> String {
        self.command(Method::GET, "/title", None).await.as_str().expect("a title").to_owned()
    }

    /// The current document, serialized.
    pub async fn source(&self) -> String {
        self.command(Method::GET, "/source", None).await.as_str().expect("a document").to_owned()
    }

    /// The first element matching the CSS `selector`, waiting up to [`WAIT`] for one to
    /// appear; panics with the page's address and document if none does.
    pub async fn find(&self, selector: &str) -> Element<'_> {
        let what = format!("an element matching {selector:?}");
        self.wait_for(&what, async || self.find_all(selector).await.into_iter().next()).await
    }

    /// Every element matching the CSS `selector` now, without waiting.
    pub async fn find_all(&self, selector: &str) -> Vec<Element<'_>> {
        let found = self.command(Method::POST, "/elements", Some(css(selector))).await;
        self.elements(found)
    }

    /// Waits up to [`WAIT`] until `check` gives a value; panics, describing `what` it
    /// waited for, the page's address and its document, if it never does.
    pub async fn wait_for<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() > deadline {
                panic!("waited {WAIT:?} for {what} on {}; the page: {}", self.current_url().await, self.source().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the browser is at a URL whose path `matches` (after a form's redirect).
    pub async fn wait_for_path(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.wait_for(what, async || {
            let url = self.current_url().await;
            let path = url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]));
            path.filter(|path| matches(path)).map(str::to_owned)
        })
        .await
    }

    /// A PNG of what the window shows.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command(Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD.decode(encoded.as_str().expect("base64")).expect("base64")
    }

    /// Closes the browser window and ends the session.
    pub async fn quit(self) {
        self.command(Method::DELETE, "", None).await;
    }

    /// How long a script of [`Self::execute`] may run (WebDriver's default: 30 s).
    pub async fn set_script_timeout(&self, timeout: Duration) {
        let milliseconds = timeout.as_millis() as u64;
        self.command(Method::POST, "/timeouts", Some(json!({ "script": milliseconds }))).await;
    }

    /// Loads the current page again, as the reload button does.
    pub async fn refresh(&self) {
        self.command(Method::POST, "/refresh", Some(json!({}))).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns what
    /// it returns. A script that returns a promise is waited for.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.command(Method::POST, "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// Opens a new tab of the same browser and switches to it; returns its handle.
    pub async fn new_tab(&self) -> String {
        let opened = self.command(Method::POST, "/window/new", Some(json!({ "type": "tab" }))).await;
        let handle = opened["handle"].as_str().expect("a window handle").to_owned();
        self.switch_to(&handle).await;
        handle
    }

    /// The handle of the tab the commands go to.
    pub async fn current_tab(&self) -> String {
        self.command(Method::GET, "/window", None).await.as_str().expect("a window handle").to_owned()
    }

    /// Makes the tab `handle` the one the next commands go to.
    pub async fn switch_to(&self, handle: &str) {
        self.command(Method::POST, "/window", Some(json!({ "handle": handle }))).await;
    }

    /// Closes the current tab, as its close button does; returns the handles of the tabs left,
    /// the next commands going to none of them until [`Self::switch_to`].
    pub async fn close_tab(&self) -> Vec<String> {
        let left = self.command(Method::DELETE, "/window", None).await;
        left.as_array().expect("the handles left").iter().map(|handle| handle.as_str().unwrap().to_owned()).collect()
    }

    fn elements(&self, found: Value) -> Vec<Element<'_>> {
        let found = found.as_array().expect("a list of elements");
        found
            .iter()
            .map(|element| Element {
                session: self,
                id: element[ELEMENT_KEY].as_str().expect("an element id").to_owned(),
            })
            .collect()
    }
}

fn css(selector: &str) -> Value {
    json!({ "using": "css selector", "value": selector })
}

/// An element of the page a [`Session`] showed when it was found.
pub struct Element<'session> {
    session: &'session Session,
    id: String,
}

impl Element<'_> {
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.session.command(method, &format!("/element/{}{path}", self.id), body).await
    }

    /// Its text as rendered (what a reader sees, whitespace collapsed).
    pub async fn text(&self) -> String {
        self.command(Method::GET, "/text", None).await.as_str().expect("text").to_owned()
    }

    /// The value of its attribute `name`, if it has one.
    pub async fn attribute(&self, name: &str) -> Option<String> {
        self.command(Method::GET, &format!("/attribute/{name}"), None).await.as_str().map(str::to_owned)
    }

    /// Types `text` into it.
    pub async fn send_keys(&self, text: &str) {
        self.command(Method::POST, "/value", Some(json!({ "text": text }))).await;
    }

    /// Clicks it, as a user would (so a submit button submits its form).
    pub async fn click(&self) {
        self.command(Method::POST, "/click", Some(json!({}))).await;
    }

    /// Every element inside it matching the CSS `selector`.
    pub async fn find_all(&self, selector: &str) -> Vec<Element<'_>> {
        let found = self.command(Method::POST, "/elements", Some(css(selector))).await;
        self.session.elements(found)
    }
}

/// The texts of `elements`, in order.
pub async fn texts(elements: &[Element<'_>]) -> Vec<String> {
    let mut texts = Vec::with_capacity(elements.len());
    for element in elements {
        texts.push(element.text().await);
    }
    texts
}

/// Helpers for the markup the site uses for figures and tables.
impl Session {
    /// The terms and definitions of the first `<dl>` matching `selector` (`Total credit` →
    /// `12.34`), waiting for it to appear.
    pub async fn definitions(&self, selector: &str) -> BTreeMap<String, String> {
        let list = self.find(selector).await;
        let terms = texts(&list.find_all("dt").await).await;
        let definitions = texts(&list.find_all("dd").await).await;
        assert_eq!(terms.len(), definitions.len(), "a term per definition in {selector}");
        terms.into_iter().zip(definitions).collect()
    }

    /// The table row that holds a link to `href`, its cells' texts by their column's
    /// heading (`Name` → `ada`); waits for it to appear.
    pub async fn table_row_linking_to(&self, href: &str) -> BTreeMap<String, String> {
        let link = format!(r#"a[href="{href}"]"#);
        let row = self.find(&format!("tbody tr:has({link})")).await;
        let headings = texts(&self.find_all(&format!("table:has({link}) thead th")).await).await;
        let cells = texts(&row.find_all("td").await).await;
        assert_eq!(headings.len(), cells.len(), "a heading per cell in the row linking to {href}: {cells:?}");
        headings.into_iter().zip(cells).collect()
    }
}
