//! Credit totals: teams, and BOINC's recent average credit.

use crate::helpers::{TestApp, policy};

#[tokio::test]
async fn a_team_earns_the_credit_of_its_members() {
    let app = TestApp::spawn().await;
    let [wu] = app.publish(1, policy(2, 2)).await[..] else { panic!() };
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let team_id = app.team("crunchers", &[alice.account_id]).await;

    let a = alice.fetch(1).await[0].replica_id;
    let b = bob.fetch(1).await[0].replica_id;
    alice.succeed(a, b"out").await;
    bob.succeed(b, b"out").await;
    app.sweep().await;

    let (total, recent): (f64, f64) = sqlx::query_as("select total_credit, expavg_credit from team where id = $1")
        .bind(team_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(total, 2.0, "only alice is in the team");
    assert!(recent > 0.0);
    assert_eq!(app.count("select count(*) from credit_grant where not applied").await, 0);
    assert_eq!(app.work_unit(wu).await.state, "validated");
}

#[tokio::test]
async fn credit_is_kept_per_day_for_accounts_and_for_teams_while_members() {
    let app = TestApp::spawn().await;
    app.publish(3, policy(2, 2)).await;
    let (alice, bob) = (app.volunteer("alice").await, app.volunteer("bob").await);
    let team_id = app.team("crunchers", &[alice.account_id]).await;
    for volunteer in [&alice, &bob] {
        for assignment in volunteer.fetch(3).await {
            volunteer.succeed(assignment.replica_id, b"out").await;
        }
    }
    // Two of alice's grants were made two days ago (their fold is late, as after an outage).
    sqlx::query(
        "update credit_grant set granted_at = now() - interval '2 days'
         where replica_id in (select replica_id from credit_grant where account_id = $1 order by replica_id limit 2)",
    )
    .bind(alice.account_id)
    .execute(&app.pool)
    .await
    .unwrap();
    app.sweep().await;

    let days = |table: &'static str, owner: &'static str, id: i64| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (chrono::NaiveDate, f64)>(&format!(
                "select day, credit from {table} where {owner} = $1 order by day"
            ))
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let today = chrono::Utc::now().date_naive();
    let two_days_ago = today - chrono::TimeDelta::days(2);
    // Every replica of these work units earns the same credit.
    let each: f64 = sqlx::query_scalar("select max(credit) from credit_grant").fetch_one(&app.pool).await.unwrap();
    assert!(each > 0.0);
    assert_eq!(
        days("account_daily_credit", "account_id", alice.account_id).await,
        [(two_days_ago, 2.0 * each), (today, each)]
    );
    assert_eq!(days("account_daily_credit", "account_id", bob.account_id).await, [(today, 3.0 * each)]);
    assert_eq!(
        days("team_daily_credit", "team_id", team_id).await,
        [(two_days_ago, 2.0 * each), (today, each)],
        "the team has alice's days, not bob's"
    );
    let sums: (f64, f64) = sqlx::query_as(
        "select (select sum(credit) from account_daily_credit), (select sum(total_credit) from account)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(sums.0, sums.1, "the days add up to the totals");
}

#[tokio::test]
async fn recent_average_credit_halves_in_a_week_without_new_credit() {
    let app = TestApp::spawn().await;
    let decayed: f64 = sqlx::query_scalar("select decayed_average(100, now() - interval '7 days', 0, now())")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!((decayed - 50.0).abs() < 1e-9, "{decayed}");
}

#[tokio::test]
async fn recent_average_credit_converges_to_the_daily_rate() {
    let app = TestApp::spawn().await;
    // Ten credits a day, every day, for a year.
    let average: f64 = sqlx::query_scalar(
        "with recursive day(n, average) as (
             select 0, 0::float8
             union all
             select n + 1, decayed_average(average, now() + make_interval(days => n), 10,
                                           now() + make_interval(days => n + 1))
             from day where n < 365
         )
         select average from day where n = 365",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!((average - 10.0).abs() < 0.01, "{average}");
}
