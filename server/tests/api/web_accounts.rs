//! Accounts on the web site, through HTTP as a browser sends it: sign up, the account key
//! and attach, log in and out, teams; and what must be refused: forged forms, password
//! guessing, and log-in answers that would tell who has an account.

use wasmgrid_protocol::api::RegisterHostRequest;

use wasmgrid_server::http::visitor::parse_network;

use crate::helpers::{Browser, Page, TestApp};

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn a_volunteer_signs_up_attaches_a_host_with_the_key_and_logs_in_and_out() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let welcome = browser.sign_up("Ada", "ada@example.org", PASSWORD).await;
    assert_eq!(welcome.status, 200, "{}", welcome.body);
    let command = welcome.body.split("<code id=\"attach-command\">").nth(1).unwrap().split("</code>").next().unwrap();
    let key = command.split("--account-key ").nth(1).expect("the command carries the key").trim().to_owned();
    assert!(command.starts_with(&format!("wasmgrid attach {}", app.client.base_url())), "{command}");
    assert!(browser.cookies.contains_key("wasmgrid_session"), "signed in at once");
    let session = welcome.set_cookies().into_iter().find(|set| set.starts_with("wasmgrid_session=")).unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax") && !session.contains("Secure"),
        "{session}"
    );

    // The key attaches a machine, which then shows under the account.
    let host = RegisterHostRequest {
        name: "ada-laptop".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cores: 4,
        memory_bytes: 8 << 30,
        client_version: "test".into(),
    };
    let registered = app.client.register_host(&key, &host).await.unwrap();
    let account = browser.get("/account").await;
    assert_eq!(account.status, 200);
    assert!(account.body.contains("Ada") && !account.body.contains(&key), "the key is shown only once");
    let public = browser.get(&format!("/users/{}", registered.account_id)).await;
    assert!(public.body.contains("ada-laptop"), "{}", public.body);

    let csrf = account.csrf();
    let out = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location()), (303, "/"));
    assert_eq!(browser.get("/account").await.location(), "/login", "signed out");

    // Back in, by name or by email, any case.
    for login in ["ada", "ADA@example.org"] {
        let mut browser = Browser::new(&app);
        let page = browser.log_in(login, PASSWORD).await;
        assert_eq!((page.status, page.location()), (303, "/account"), "{login}: {}", page.body);
        assert_eq!(browser.get("/account").await.status, 200);
    }
}

#[tokio::test]
async fn failed_log_ins_say_nothing_about_who_exists_and_are_limited() {
    let app = TestApp::spawn().await;
    Browser::new(&app).sign_up("grace", "", PASSWORD).await;

    let mut browser = Browser::new(&app);
    let wrong_password = browser.log_in("grace", "not the password").await;
    let nobody = browser.log_in("nobody-at-all", "not the password").await;
    assert_eq!((wrong_password.status, nobody.status), (401, 401));
    let message =
        |page: &Page| page.body.split("role=\"alert\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
    assert_eq!(message(&wrong_password), message(&nobody), "the same answer either way");

    for _ in 0..4 {
        browser.log_in("grace", "still wrong").await;
    }
    let limited = browser.log_in("grace", PASSWORD).await;
    assert_eq!(limited.status, 429, "guessing stops for a while, even with the right password");
    assert!(limited.body.contains("too many failed attempts"));
}

#[tokio::test]
async fn forged_forms_are_refused() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.sign_up("hopper", "", PASSWORD).await;

    let no_token = browser.post("/account/name", &[("name", "pwned")]).await;
    assert_eq!(no_token.status, 422, "a form without its token does not even parse");
    let wrong_token = browser.post("/account/name", &[("csrf", "csrf_00"), ("name", "pwned")]).await;
    assert_eq!(wrong_token.status, 403);
    let csrf = browser.get("/account").await.csrf();
    browser.extra.push(("origin", "https://evil.example".into()));
    let other_site = browser.post("/account/name", &[("csrf", &csrf), ("name", "pwned")]).await;
    assert_eq!(other_site.status, 403);
    browser.extra.clear();
    let renamed = browser.post("/account/name", &[("csrf", &csrf), ("name", "Grace Hopper")]).await;
    assert_eq!((renamed.status, renamed.location()), (303, "/account?done=renamed"), "reloading posts nothing again");
    let account = browser.get(renamed.location()).await;
    assert!(account.body.contains("your name is changed") && account.body.contains("<h1>Grace Hopper</h1>"));
    let names: Vec<String> = sqlx::query_scalar("select name from account").fetch_all(&app.pool).await.unwrap();
    assert_eq!(names, ["Grace Hopper"]);
}

#[tokio::test]
async fn volunteers_found_join_and_leave_teams() {
    let app = TestApp::spawn().await;
    let mut founder = Browser::new(&app);
    founder.sign_up("founder", "", PASSWORD).await;
    let csrf = founder.get("/account").await.csrf();
    let founded =
        founder.post("/teams", &[("csrf", &csrf), ("name", "Team <Rocket>"), ("description", "we compute")]).await;
    assert_eq!(founded.status, 303);
    let team_path = founded.location().to_owned();
    let team_page = founder.get(&team_path).await;
    assert!(team_page.body.contains("Team &#60;Rocket&#62;") && team_page.body.contains("founder"));
    assert!(!team_page.body.contains("Join this team"), "already a member");

    let mut joiner = Browser::new(&app);
    joiner.sign_up("joiner", "", PASSWORD).await;
    let page = joiner.get(&team_path).await;
    let joined = joiner.post(&format!("{team_path}/join"), &[("csrf", &page.csrf())]).await;
    assert_eq!(joined.status, 303);
    assert!(joiner.get(&team_path).await.body.contains("joiner"));

    let csrf = joiner.get("/account").await.csrf();
    let other_team = joiner.post("/teams", &[("csrf", &csrf), ("name", "Other <Team>")]).await.location().to_owned();
    let first_team = joiner.get(&team_path).await;
    assert!(
        first_team.body.contains("Leave Other &#60;Team&#62; and join this team"),
        "joining says it leaves the team the volunteer is in: {}",
        first_team.body
    );
    let own_team = joiner.get(&other_team).await;
    assert!(!own_team.body.contains(&format!("{other_team}/join")), "no join form for a member: {}", own_team.body);
    let left = joiner.post("/account/team/leave", &[("csrf", &csrf)]).await;
    assert_eq!(left.status, 303);
    assert!(joiner.get(left.location()).await.body.contains("you left your team"));
    let members: i64 = sqlx::query_scalar("select count(*) from account where team_id is not null")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(members, 1);
}

/// A server behind a reverse proxy on this machine (the tests connect from 127.0.0.1).
async fn behind_a_trusted_proxy() -> TestApp {
    TestApp::spawn_with(|config| {
        config.site.trusted_proxies = vec![parse_network("127.0.0.1").unwrap()];
    })
    .await
}

#[tokio::test]
async fn behind_https_the_cookies_are_secure() {
    let app = behind_a_trusted_proxy().await;
    let mut browser = Browser::new(&app);
    browser.extra.push(("x-forwarded-proto", "https".into()));
    let welcome = browser.sign_up("tls", "", PASSWORD).await;
    let cookies = welcome.set_cookies();
    assert!(!cookies.is_empty());
    assert!(cookies.iter().all(|cookie| cookie.contains("; Secure")), "{cookies:?}");
    assert!(welcome.body.contains("wasmgrid attach https://127.0.0.1:"), "the proxy's scheme is the site's");
}

#[tokio::test]
async fn forwarded_headers_from_anyone_but_a_trusted_proxy_are_ignored() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.extra.push(("x-forwarded-proto", "https".into()));
    let welcome = browser.sign_up("plain", "", PASSWORD).await;
    assert!(welcome.set_cookies().iter().all(|cookie| !cookie.contains("Secure")), "{:?}", welcome.set_cookies());
    assert!(welcome.body.contains("wasmgrid attach http://127.0.0.1:"));

    // A guesser who makes up a new address for every guess is still one address.
    let mut statuses = Vec::new();
    for i in 0..7 {
        let mut guesser = Browser::new(&app);
        guesser.extra.push(("x-forwarded-for", format!("198.51.100.{i}")));
        statuses.push(guesser.log_in("plain", "a wrong guess").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_visitor_is_limited_by_their_own_address() {
    let app = behind_a_trusted_proxy().await;
    Browser::new(&app).sign_up("lovelace", "", PASSWORD).await;
    // What a client claims comes first; the proxy appends the address it saw.
    let from = |address: &str| Browser::forwarded_for(&app, &format!("10.9.9.9, {address}"));
    let mut guesser = from("203.0.113.66");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(guesser.log_in("lovelace", "a wrong guess").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    let owner = from("203.0.113.7").log_in("lovelace", PASSWORD).await;
    assert_eq!(owner.status, 303, "the owner, elsewhere, is not locked out by the guesser");

    // Guesses at one name from many addresses stop too, at a higher count.
    let mut limited_after = None;
    for i in 0..60 {
        let status = from(&format!("198.51.100.{i}")).log_in("lovelace", "a wrong guess").await.status;
        if status == 429 {
            limited_after = Some(i);
            break;
        }
        assert_eq!(status, 401);
    }
    // The five failed guesses above count towards the account's fifty; the refused sixth
    // checked no password and counts for nothing, nor does the owner's success.
    assert_eq!(limited_after, Some(50 - 5), "guesses from many addresses at one name are limited");
}

#[tokio::test]
async fn one_address_cannot_lock_an_account_out_for_everyone() {
    let app = behind_a_trusted_proxy().await;
    Browser::new(&app).sign_up("noether", "noether@example.org", PASSWORD).await;
    let from = |address: &str| Browser::forwarded_for(&app, address);
    // Refused requests check no password and so count against nothing.
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(from("203.0.113.66").log_in("noether", "a wrong guess").await.status);
    }
    assert_eq!(statuses.iter().filter(|status| **status == 401).count(), 5, "{statuses:?}");
    assert_eq!(from("203.0.113.7").log_in("noether", PASSWORD).await.status, 303, "the owner, elsewhere");

    // Name, email and their other spellings are one account, limited as one.
    let mut guesser = from("198.51.100.1");
    let mut statuses = Vec::new();
    for login in ["noether", "NOETHER", "noether@example.org", "Noether@Example.org", "noether", "noether@example.org"]
    {
        statuses.push(guesser.log_in(login, "a wrong guess").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);

    // A subscriber's IPv6 /64 is one address, however many of its addresses they use.
    let mut statuses = Vec::new();
    for i in 1..=6 {
        statuses.push(from(&format!("2001:db8:5:6::{i:x}")).log_in("noether", "a wrong guess").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    assert_eq!(from("2001:db8:5:7::1").log_in("noether", PASSWORD).await.status, 303, "the next /64 is another");

    // A log-in longer than any name or email fails like any other, and is not stored.
    let long = "n".repeat(100_000);
    assert_eq!(from("198.51.100.2").log_in(&long, PASSWORD).await.status, 401);
    let longest: i32 = sqlx::query_scalar("select coalesce(max(length(key)), 0) from login_attempt")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(longest < 200, "a key {longest} characters long was stored");
}

#[tokio::test]
async fn a_public_url_names_the_site_whatever_the_request_says() {
    let app =
        TestApp::spawn_with(|config| config.site.public_url = Some("https://grid.example.org".parse().unwrap())).await;
    let mut browser = Browser::new(&app);
    let welcome = browser.sign_up("public", "", PASSWORD).await;
    assert_eq!(welcome.status, 200, "{}", welcome.body);
    assert!(welcome.body.contains("wasmgrid attach https://grid.example.org --account-key"), "{}", welcome.body);
    assert!(welcome.set_cookies().iter().all(|cookie| cookie.contains("; Secure")));
    let home = browser.get("/").await;
    assert!(home.body.contains("wasmgrid attach https://grid.example.org"));

    let csrf = browser.get("/account").await.csrf();
    browser.extra.push(("origin", format!("http://{}", app.client.base_url().trim_start_matches("http://"))));
    let from_the_bare_server = browser.post("/account/name", &[("csrf", &csrf), ("name", "renamed")]).await;
    assert_eq!(from_the_bare_server.status, 403, "forms come from the public site only");
    browser.extra = vec![("origin", "http://grid.example.org".into())];
    let other_scheme = browser.post("/account/name", &[("csrf", &csrf), ("name", "renamed")]).await;
    assert_eq!(other_scheme.status, 403, "plain HTTP is another origin than the HTTPS site");
    browser.extra = vec![("origin", "https://grid.example.org".into())];
    let from_the_site = browser.post("/account/name", &[("csrf", &csrf), ("name", "renamed")]).await;
    assert_eq!(from_the_site.status, 303, "{}", from_the_site.body);
}

#[tokio::test]
async fn guesses_sent_at_once_are_limited_like_guesses_sent_in_turn() {
    let app = TestApp::spawn().await;
    Browser::new(&app).sign_up("turing", "", PASSWORD).await;
    let mut guesses = Vec::new();
    for i in 0..12 {
        let mut browser = Browser::new(&app);
        guesses.push(tokio::spawn(async move { browser.log_in("turing", &format!("guess number {i}")).await.status }));
    }
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await.unwrap());
    }
    let checked = statuses.iter().filter(|status| **status == 401).count();
    assert!(checked <= 5, "{checked} guesses were checked: {statuses:?}");
    assert!(statuses.iter().all(|status| matches!(status, 401 | 429)), "{statuses:?}");
}

#[tokio::test]
async fn names_in_any_script_sign_in_whatever_their_case() {
    let app = TestApp::spawn().await;
    let welcome = Browser::new(&app).sign_up("Émile", "", PASSWORD).await;
    assert_eq!(welcome.status, 200);
    for login in ["Émile", "ÉMILE"] {
        let page = Browser::new(&app).log_in(login, PASSWORD).await;
        assert_eq!(page.status, 303, "{login}: {}", page.body);
    }
    let refused = Browser::new(&app).sign_up("someone@example.org", "", PASSWORD).await;
    assert_eq!(refused.status, 422, "a name that looks like an email would be ambiguous at log-in");
}

#[tokio::test]
async fn sign_ups_from_one_address_are_limited() {
    let app = TestApp::spawn_with(|config| config.registration.accounts_per_address = 5).await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        statuses.push(Browser::new(&app).sign_up(&format!("bulk-{i}"), "", PASSWORD).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn quote_breaking_names_stay_inside_their_attributes() {
    let app = TestApp::spawn().await;
    let payload = r#"x" autofocus onfocus="alert(1)"><script>alert(2)</script>"#;
    let mut browser = Browser::new(&app);
    let welcome = browser.sign_up(payload, "", PASSWORD).await;
    assert_eq!(welcome.status, 200);
    let account = browser.get("/account").await;
    let echoed = Browser::new(&app).log_in(payload, "wrong password").await;
    for (page, html) in [("account", &account.body), ("sign-up", &welcome.body), ("log-in echo", &echoed.body)] {
        assert!(!html.contains("onfocus=\"alert") && !html.contains("<script>alert"), "{page}: {html}");
        assert!(
            html.contains("x&#34; autofocus onfocus=&#34;alert(1)&#34;&#62;"),
            "{page} keeps it as a value: {html}"
        );
    }
}

#[tokio::test]
async fn changing_the_password_needs_the_current_one_and_logs_out_other_browsers() {
    let app = TestApp::spawn().await;
    let mut laptop = Browser::new(&app);
    laptop.sign_up("babbage", "", PASSWORD).await;
    let mut phone = Browser::new(&app);
    assert_eq!(phone.log_in("babbage", PASSWORD).await.status, 303);
    const NEW: &str = "difference engine no. 2";

    let csrf = laptop.get("/account").await.csrf();
    async fn change(browser: &mut Browser, csrf: &str, current: &str, new: &str) -> Page {
        browser.post("/account/password", &[("csrf", csrf), ("current", current), ("new", new)]).await
    }
    let wrong = change(&mut laptop, &csrf, "not the password", NEW).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("the current password is wrong"));
    let short = change(&mut laptop, &csrf, PASSWORD, "short").await;
    assert_eq!(short.status, 422);
    assert_eq!(phone.get("/account").await.status, 200, "nothing changed yet");

    let changed = change(&mut laptop, &csrf, PASSWORD, NEW).await;
    assert_eq!((changed.status, changed.location()), (303, "/account?done=password"));
    assert!(laptop.get(changed.location()).await.body.contains("your password is changed"));
    assert_eq!(phone.get("/account").await.location(), "/login", "the other browser is logged out");
    assert_eq!(Browser::new(&app).log_in("babbage", PASSWORD).await.status, 401, "the old password is gone");
    assert_eq!(Browser::new(&app).log_in("babbage", NEW).await.status, 303);

    // Someone at an open session cannot guess the current password for long: five wrong
    // ones in a quarter of an hour, the first of them above.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(change(&mut laptop, &csrf, "a wrong guess", "whatever it is now").await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429]);
}

#[tokio::test]
async fn nul_characters_in_forms_are_refused_with_the_field_they_are_in() {
    let app = TestApp::spawn().await;
    let signed_up = Browser::new(&app).sign_up("nul-email", "someone@exa\0mple.org", PASSWORD).await;
    assert_eq!(signed_up.status, 422, "{}", signed_up.body);
    assert!(signed_up.body.contains("email address"), "{}", signed_up.body);
    let logged_in = Browser::new(&app).log_in("some\0one", PASSWORD).await;
    assert_eq!(logged_in.status, 422, "{}", logged_in.body);
    assert!(logged_in.body.contains("name or email"), "{}", logged_in.body);
    assert_eq!(app.count("select count(*) from account").await, 0);

    let mut founder = Browser::new(&app);
    founder.sign_up("founder", "", PASSWORD).await;
    let csrf = founder.get("/account").await.csrf();
    let refused = founder.post("/teams", &[("csrf", &csrf), ("name", "nul team"), ("description", "a\0b")]).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("description"), "{}", refused.body);
    let refused = founder.post("/teams", &[("csrf", &csrf), ("name", "\u{202E}maet")]).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(app.count("select count(*) from team").await, 0);
}

#[tokio::test]
async fn team_names_are_unique_regardless_of_case() {
    let app = TestApp::spawn().await;
    let mut first = Browser::new(&app);
    first.sign_up("first", "", PASSWORD).await;
    let csrf = first.get("/account").await.csrf();
    assert_eq!(first.post("/teams", &[("csrf", &csrf), ("name", "Crunchers")]).await.status, 303);

    let mut second = Browser::new(&app);
    second.sign_up("second", "", PASSWORD).await;
    let csrf = second.get("/account").await.csrf();
    let again = second.post("/teams", &[("csrf", &csrf), ("name", "CRUNCHERS")]).await;
    assert!(again.body.contains("a team of that name exists"), "{}", again.body);
    assert_eq!(app.count("select count(*) from team").await, 1);
}
