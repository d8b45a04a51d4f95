//! A scheduler reply lost after the server committed it (the connection dropped, the
//! server or the daemon killed in between): the host lists what it holds, and the server
//! sends the rest again, as BOINC's "resend lost results" does.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use wasmgrid_protocol::api::{SchedulerReply, SchedulerRequest};

use crate::helpers::{TestApp, Volunteer, policy};

/// Sends a scheduler request over a connection of its own and hangs up, unread, as soon as
/// the server has committed what it handed out.
async fn request_and_hang_up(app: &TestApp, volunteer: &Volunteer, want: u32) {
    let base = app.client.base_url().strip_prefix("http://").unwrap().to_owned();
    let request = SchedulerRequest { want_replicas: want, held_replicas: Some(Vec::new()), ..Default::default() };
    let body = serde_json::to_vec(&request).unwrap();
    let head = format!(
        "POST /api/v1/scheduler HTTP/1.1\r\nHost: {base}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        volunteer.token,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(&base).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = format!("select count(*) from replica where host_id = {} and state = 'in_progress'", volunteer.host_id);
    while app.count(&held).await < i64::from(want) {
        assert!(Instant::now() < deadline, "the server never committed the claim");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
}

async fn request_holding(volunteer: &Volunteer, held: Vec<i64>, want: u32) -> SchedulerReply {
    let request = SchedulerRequest { want_replicas: want, held_replicas: Some(held), ..Default::default() };
    volunteer.client.scheduler(&volunteer.token, &request).await.unwrap()
}

#[tokio::test]
async fn a_reply_lost_after_the_commit_is_sent_again() {
    let app = TestApp::spawn().await;
    app.publish(3, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;

    request_and_hang_up(&app, &alice, 2).await;
    let handed: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select id, deadline_at from replica where state = 'in_progress' order by id")
            .fetch_all(&app.pool)
            .await
            .unwrap();

    let reply = request_holding(&alice, Vec::new(), 0).await;
    let mut resent: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        reply.assignments.iter().map(|a| (a.replica_id, a.deadline)).collect();
    resent.sort();
    assert_eq!(resent, handed, "the same replicas, with the same deadlines");

    // Once the host lists them, they are not sent a third time, and the host runs them.
    let held: Vec<i64> = handed.iter().map(|(id, _)| *id).collect();
    assert!(request_holding(&alice, held.clone(), 0).await.assignments.is_empty());
    for id in held {
        alice.succeed(id, b"done").await;
    }
    assert_eq!(app.count("select count(*) from work_unit where state = 'validated'").await, 2);
}

#[tokio::test]
async fn replicas_a_host_lists_but_should_not_run_are_aborted() {
    let app = TestApp::spawn().await;
    app.publish(3, policy(1, 1)).await;
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let mine = alice.fetch(2).await;
    let (reported, late) = (mine[0].replica_id, mine[1].replica_id);
    alice.succeed(reported, b"done").await;
    let bobs = bob.fetch(1).await[0].replica_id;
    // Past its deadline, a replica may still be finished: a late result counts.
    app.expire(late).await;
    app.sweep().await;

    let reply = request_holding(&alice, vec![reported, late, bobs, 999_999], 0).await;

    assert_eq!(reply.abort, [reported, bobs, 999_999]);
    assert!(reply.assignments.is_empty());
}

#[tokio::test]
async fn a_host_that_lists_nothing_is_sent_nothing_again() {
    let app = TestApp::spawn().await;
    app.publish(2, policy(1, 1)).await;
    let alice = app.volunteer("alice").await;
    alice.fetch(2).await;
    // Without a list (an older client), the server cannot tell a lost reply from a task.
    assert!(alice.fetch(0).await.is_empty());
}
