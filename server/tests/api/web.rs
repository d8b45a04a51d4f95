//! The public pages and their JSON: real work earns real credit, which the leaderboards,
//! user, team and host pages and `/api/v1/stats` show; hostile names stay text.

use reqwest::Method;
use wasmgrid_protocol::stats::{HostStats, Leaderboard, ProjectStatus, TeamStats, Totals, UserStats};

use crate::helpers::{TestApp, policy};

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.request(Method::GET, path).send().await.unwrap()
}

async fn page(app: &TestApp, path: &str) -> String {
    let response = get(app, path).await;
    assert_eq!(response.status(), 200, "{path}");
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
    let policy = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("default-src 'none'") && !policy.contains("unsafe-inline"), "{path}: {policy}");
    response.text().await.unwrap()
}

async fn json<T: serde::de::DeserializeOwned>(app: &TestApp, path: &str) -> T {
    let response = get(app, path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// Two volunteers validate `count` work units together; returns them.
async fn validated_work(app: &TestApp, count: usize) -> (crate::helpers::Volunteer, crate::helpers::Volunteer) {
    app.publish(count, policy(2, 2)).await;
    let alice = app.volunteer("alice").await;
    let bob = app.volunteer("bob").await;
    for volunteer in [&alice, &bob] {
        for assignment in volunteer.fetch(count as u32).await {
            volunteer.succeed(assignment.replica_id, b"the answer").await;
        }
    }
    app.sweep().await;
    (alice, bob)
}

#[tokio::test]
async fn credit_earned_shows_on_the_leaderboards_and_the_user_and_host_pages() {
    let app = TestApp::spawn().await;
    let (alice, _bob) = validated_work(&app, 3).await;

    let totals: Totals = json(&app, "/api/v1/stats/totals").await;
    assert_eq!((totals.volunteers, totals.hosts, totals.work_units_validated), (2, 2, 3));
    assert!(totals.total_credit > 0.0 && totals.credit_per_day > 0.0, "{totals:?}");

    let board: Leaderboard = json(&app, "/api/v1/stats/users?order=total").await;
    assert_eq!(board.entries.len(), 2);
    assert_eq!(board.entries[0].rank, 1);
    assert_eq!(board.entries[0].total_credit, board.entries[1].total_credit, "both did the same work");
    let user: UserStats = json(&app, &format!("/api/v1/stats/users/{}", alice.account_id)).await;
    assert_eq!(user.hosts.len(), 1);
    assert_eq!(user.total_credit, board.entries[0].total_credit);
    let host: HostStats = json(&app, &format!("/api/v1/stats/hosts/{}", alice.host_id)).await;
    assert_eq!(host.recent_results.len(), 3);
    assert!(host.recent_results.iter().all(|result| result.validation == "valid"), "{host:?}");
    assert_eq!(host.valid_results, 3);

    let home = page(&app, "/").await;
    assert!(home.contains("wasmgrid attach http://127.0.0.1:"), "the attach command names this server");
    let users = page(&app, "/users").await;
    assert!(users.contains("alice") && users.contains("bob"));
    let user_page = page(&app, &format!("/users/{}", alice.account_id)).await;
    assert!(user_page.contains(&format!("/hosts/{}", alice.host_id)));
    let host_page = page(&app, &format!("/hosts/{}", alice.host_id)).await;
    assert!(host_page.contains("valid") && host_page.contains("wu-0"), "{host_page}");
    let status = page(&app, "/status").await;
    assert!(status.contains("<svg") && status.contains("<rect"), "the chart has bars: {status}");
    let status: ProjectStatus = json(&app, "/api/v1/stats/status").await;
    assert_eq!(status.replicas_per_hour.iter().map(|hour| hour.count).sum::<i64>(), 6);
}

#[tokio::test]
async fn user_and_team_pages_chart_credit_over_time() {
    let app = TestApp::spawn().await;
    app.publish(2, policy(2, 2)).await;
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let team_id = app.team("crunchers", &[alice.account_id, bob.account_id]).await;
    for volunteer in [&alice, &bob] {
        for assignment in volunteer.fetch(2).await {
            volunteer.succeed(assignment.replica_id, b"the answer").await;
        }
    }
    app.sweep().await;

    let today = chrono::Utc::now().date_naive();
    let user: UserStats = json(&app, &format!("/api/v1/stats/users/{}", alice.account_id)).await;
    assert_eq!(user.credit_per_day.len(), 1, "{user:?}");
    assert_eq!((user.credit_per_day[0].day, user.credit_per_day[0].credit), (today, user.total_credit));
    let team: TeamStats = json(&app, &format!("/api/v1/stats/teams/{team_id}")).await;
    assert_eq!(team.credit_per_day.len(), 1, "{team:?}");
    assert_eq!(team.credit_per_day[0].credit, 2.0 * user.total_credit, "both members' credit");

    for path in [format!("/users/{}", alice.account_id), format!("/teams/{team_id}")] {
        let html = page(&app, &path).await;
        let chart = html.split("<figure class=\"chart\">").nth(1).unwrap_or_else(|| panic!("no chart: {html}"));
        assert_eq!(chart.matches("<rect").count(), 1, "one day with credit, one bar: {chart}");
        assert!(chart.contains(&format!("<title>{today}: ")) && chart.contains("<polyline"), "{chart}");
    }
}

#[tokio::test]
async fn a_team_lists_its_members_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    let mut members = Vec::new();
    for i in 0..130 {
        members.push(app.volunteer(&format!("member-{i:03}")).await.account_id);
    }
    let team_id = app.team("crowd", &members).await;
    sqlx::query("update account set total_credit = id").execute(&app.pool).await.unwrap();

    let first: TeamStats = json(&app, &format!("/api/v1/stats/teams/{team_id}")).await;
    let second: TeamStats = json(&app, &format!("/api/v1/stats/teams/{team_id}?page=2")).await;
    assert_eq!((first.member_count, first.members.len(), second.members.len()), (130, 100, 30));
    assert_eq!((second.members_page, second.members[0].rank), (2, 101));
    let all: Vec<_> = first.members.iter().chain(&second.members).collect();
    assert!(all.windows(2).all(|pair| pair[0].total_credit > pair[1].total_credit), "by credit, no one twice");

    let html = page(&app, &format!("/teams/{team_id}")).await;
    assert!(html.contains("Page 1 of 2") && html.contains(&format!("/teams/{team_id}?page=2")), "links on");
    let html = page(&app, &format!("/teams/{team_id}?page=2")).await;
    assert!(html.contains("member-000") && !html.contains("member-129"), "the lowest credit comes last");
    assert_eq!(get(&app, &format!("/teams/{team_id}?page=0")).await.status(), 400);
    assert_eq!(get(&app, &format!("/teams/{team_id}?page=3")).await.status(), 404, "past the last page");
}

#[tokio::test]
async fn leaderboards_are_ordered_and_paginated() {
    let app = TestApp::spawn().await;
    for i in 0..120 {
        app.volunteer(&format!("user-{i:03}")).await;
    }
    // Credit as the sweep would leave it: totals, and recent averages last updated at
    // different times, so that they decay from different moments.
    sqlx::query(
        "update account set total_credit = id * 10, expavg_credit = 1000 - id,
                            expavg_time = now() - (id % 5) * interval '1 day'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Stored long ago, this large average is small by now and must rank low.
    sqlx::query(
        "update account set expavg_credit = 100000, expavg_time = now() - interval '200 days' where name = 'user-050'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let first: Leaderboard = json(&app, "/api/v1/stats/users").await;
    assert_eq!(first.entries.len(), 100);
    assert!(first.entries.windows(2).all(|pair| pair[0].total_credit >= pair[1].total_credit));
    let second: Leaderboard = json(&app, "/api/v1/stats/users?page=2").await;
    assert_eq!(second.entries.len(), 20);
    assert_eq!(second.entries[0].rank, 101);
    let recent: Leaderboard = json(&app, "/api/v1/stats/users?order=recent").await;
    let second_page: Leaderboard = json(&app, "/api/v1/stats/users?order=recent&page=2").await;
    let all: Vec<_> = recent.entries.iter().chain(&second_page.entries).collect();
    assert_eq!(all.len(), 120);
    assert!(
        all.windows(2).all(|pair| pair[0].recent_average_credit >= pair[1].recent_average_credit),
        "ranked by the average as it is now, not as it was stored"
    );
    assert_eq!(all.last().unwrap().name, "user-050", "the long-stale average ranks last");

    let html = page(&app, "/users?order=recent&page=2").await;
    assert!(html.contains("page=1") && !html.contains("page=3"), "links back, and not past the end");
    let html = page(&app, "/users").await;
    assert!(html.contains("page=2") && html.contains("Page 1 of 2"), "links on");
    for bad in ["/api/v1/stats/users?page=0", "/api/v1/stats/users?page=99999", "/users?page=-1"] {
        assert_eq!(get(&app, bad).await.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn hostile_names_are_shown_as_text() {
    let app = TestApp::spawn().await;
    let payloads = [r#"<script>alert("x")</script>"#, r#""><img src=x onerror=alert(1)>"#, "' onmouseover='alert(1)"];
    let mut ids = Vec::new();
    for payload in payloads {
        ids.push(app.volunteer(payload).await);
    }
    let team = app.team(payloads[0], &ids.iter().map(|volunteer| volunteer.account_id).collect::<Vec<_>>()).await;
    sqlx::query("update account set total_credit = 1").execute(&app.pool).await.unwrap();
    sqlx::query("update host set name = $1").bind(payloads[1]).execute(&app.pool).await.unwrap();

    let mut pages = vec!["/users".to_owned(), "/teams".to_owned(), "/hosts".to_owned(), format!("/teams/{team}")];
    for volunteer in &ids {
        pages.push(format!("/users/{}", volunteer.account_id));
        pages.push(format!("/hosts/{}", volunteer.host_id));
    }
    for path in pages {
        let html = page(&app, &path).await;
        for raw in ["<script>alert", "<img src=x", "' onmouseover='"] {
            assert!(!html.contains(raw), "{path} contains {raw:?} unescaped");
        }
        assert!(html.contains("&#60;script&#62;") || html.contains("&#60;img"), "{path} shows the names as text");
    }
}

#[tokio::test]
async fn a_missing_user_is_a_404_page() {
    let app = TestApp::spawn().await;
    let response = get(&app, "/users/999999").await;
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("no user 999999"));
    assert_eq!(get(&app, "/api/v1/stats/hosts/999999").await.status(), 404);
    let css = get(&app, "/static/style.css").await;
    assert_eq!(css.status(), 200);
    assert!(css.headers()["content-type"].to_str().unwrap().starts_with("text/css"));
}

#[tokio::test]
async fn the_daily_export_holds_everyone_with_credit_and_nothing_private() {
    use std::io::Read;
    let app = TestApp::spawn().await;
    let (alice, _bob) = validated_work(&app, 2).await;
    sqlx::query("update account set email = 'alice@example.org' where id = $1")
        .bind(alice.account_id)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("update host set name = 'machine-in-room-101'").execute(&app.pool).await.unwrap();

    for (file, count) in [("users.json.gz", 2), ("hosts.json.gz", 2), ("teams.json.gz", 0)] {
        let response = get(&app, &format!("/api/v1/stats/export/{file}")).await;
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(response.headers()["content-type"], "application/gzip");
        let gzipped = response.bytes().await.unwrap();
        let mut json = String::new();
        flate2::read::GzDecoder::new(&gzipped[..]).read_to_string(&mut json).unwrap();
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(rows.len(), count, "{file}: {json}");
        for secret in ["example.org", "wga_", "wgh_", "key", "token", "email", "room-101"] {
            assert!(!json.contains(secret), "{file} holds {secret:?}: {json}");
        }
        if file == "users.json.gz" {
            assert!(rows.iter().all(|row| row["total_credit"].as_f64().unwrap() > 0.0), "{json}");
        }
    }
    assert_eq!(get(&app, "/api/v1/stats/export/passwords.json.gz").await.status(), 404);
}
