//! Charts drawn as SVG on the server: replicas reported per hour on the status page, and
//! credit over time on user and team pages. No script, nothing for the
//! Content-Security-Policy to allow, they print, and each bar's value shows on hover (its
//! `<title>`).
//!
//! The markup is built from numbers and dates only, so it can be inserted into the page
//! unescaped.

use std::fmt::Write;

use chrono::{DateTime, DurationRound, NaiveDate, TimeDelta, Utc};
use wasmgrid_protocol::stats::{CREDIT_HISTORY_DAYS, DayCredit, HourCount};

/// Hours shown, ending with the current one.
pub const HOURS: i64 = 72;
const WIDTH: i64 = 720;
const HEIGHT: i64 = 160;

/// One bar per hour of the last [`HOURS`], empty hours included, scaled to the busiest.
pub fn replicas_per_hour(hours: &[HourCount], now: DateTime<Utc>) -> String {
    let this_hour = now.duration_trunc(TimeDelta::hours(1)).unwrap_or(now);
    let first = this_hour - TimeDelta::hours(HOURS - 1);
    let mut counts = vec![0i64; HOURS as usize];
    for hour in hours {
        let index = (hour.hour - first).num_hours();
        if (0..HOURS).contains(&index) {
            counts[index as usize] += hour.count;
        }
    }
    let busiest = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Replicas reported per hour, busiest hour {busiest}">"#
    );
    let values: Vec<f64> = counts.iter().map(|&count| count as f64).collect();
    let titles: Vec<String> = counts.iter().map(i64::to_string).collect();
    push_bars(&mut svg, &values, &titles);
    svg.push_str("</svg>");
    svg
}

/// A bar per value, scaled to the largest, each with its title; zero values draw nothing.
fn push_bars(svg: &mut String, values: &[f64], titles: &[String]) {
    let largest = values.iter().copied().fold(0.0, f64::max);
    if largest <= 0.0 {
        return;
    }
    let bar = WIDTH / values.len() as i64;
    for (i, (value, title)) in values.iter().zip(titles).enumerate() {
        if *value <= 0.0 {
            continue;
        }
        let height = ((value / largest * (HEIGHT - 1) as f64) as i64).max(1);
        let (x, y) = (i as i64 * bar, HEIGHT - height);
        let _ =
            write!(svg, r#"<rect x="{x}" y="{y}" width="{}" height="{height}"><title>{title}</title></rect>"#, bar - 1);
    }
}

/// A chart of credit over time, and the figures its caption gives.
pub struct CreditChart {
    pub svg: String,
    pub first_day: NaiveDate,
    /// The credit of the best day drawn, and of all days drawn.
    pub best_day: f64,
    pub earned: f64,
}

/// Credit over the last [`CREDIT_HISTORY_DAYS`] ending `today`: a bar per day's credit, and
/// a line of the total credit at the end of each day, which ends at `total_credit`. Each
/// has its own scale; the caption gives the figures.
pub fn credit_history(days: &[DayCredit], total_credit: f64, today: NaiveDate) -> CreditChart {
    let count = CREDIT_HISTORY_DAYS as usize;
    let first = today - TimeDelta::days(CREDIT_HISTORY_DAYS - 1);
    let mut per_day = vec![0.0f64; count];
    for day in days {
        let index = (day.day - first).num_days();
        if (0..CREDIT_HISTORY_DAYS).contains(&index) {
            per_day[index as usize] += day.credit;
        }
    }
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Credit per day and total credit over the last {CREDIT_HISTORY_DAYS} days">"#
    );
    let titles: Vec<String> = (0..count)
        .map(|i| format!("{}: {}", first + TimeDelta::days(i as i64), super::format::credit(per_day[i])))
        .collect();
    push_bars(&mut svg, &per_day, &titles);

    // The total at the end of each day, walking back from today's.
    let mut totals = vec![0.0f64; count];
    let mut total = total_credit.max(0.0);
    for i in (0..count).rev() {
        totals[i] = total;
        total = (total - per_day[i]).max(0.0);
    }
    if total_credit > 0.0 {
        let bar = WIDTH as f64 / count as f64;
        let points: Vec<String> = totals
            .iter()
            .enumerate()
            .map(|(i, total)| {
                let y = HEIGHT as f64 - total / total_credit * (HEIGHT - 1) as f64;
                format!("{:.1},{y:.1}", (i as f64 + 0.5) * bar)
            })
            .collect();
        let _ = write!(svg, r#"<polyline class="total" points="{}"/>"#, points.join(" "));
    }
    svg.push_str("</svg>");
    CreditChart {
        svg,
        first_day: first,
        best_day: per_day.iter().copied().fold(0.0, f64::max),
        earned: per_day.iter().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_to_the_busiest_hour_and_old_hours_are_left_out() {
        let now: DateTime<Utc> = "2026-11-25T12:30:00Z".parse().unwrap();
        let hour = |text: &str, count| HourCount { hour: text.parse().unwrap(), count };
        let svg = replicas_per_hour(
            &[hour("2026-11-20T00:00:00Z", 500), hour("2026-11-25T11:00:00Z", 10), hour("2026-11-25T12:00:00Z", 20)],
            now,
        );
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains(&format!(r#"height="{}""#, HEIGHT - 1)), "the busiest bar is full height: {svg}");
        assert!(svg.contains("<title>10</title>") && !svg.contains("500"), "{svg}");
    }

    #[test]
    fn credit_history_draws_a_bar_per_day_with_credit_and_a_total_line_ending_at_the_total() {
        let today: NaiveDate = "2026-11-26".parse().unwrap();
        let day = |text: &str, credit| DayCredit { day: text.parse().unwrap(), credit };
        let chart =
            credit_history(&[day("2026-01-01", 1000.0), day("2026-11-20", 5.0), day("2026-11-26", 10.0)], 115.0, today);
        assert_eq!((chart.best_day, chart.earned), (10.0, 15.0), "the figures are of the days drawn");
        assert_eq!(chart.first_day, "2026-08-29".parse::<NaiveDate>().unwrap());
        let svg = chart.svg;
        assert_eq!(svg.matches("<rect").count(), 2, "days older than the history are left out: {svg}");
        assert!(svg.contains("<title>2026-11-26: 10.00</title>"), "{svg}");
        assert!(svg.contains(&format!(r#"height="{}""#, HEIGHT - 1)), "the best day is full height: {svg}");
        let points: Vec<(f64, f64)> = svg
            .split(r#"points=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .split(' ')
            .map(|point| point.split_once(',').map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap())).unwrap())
            .collect();
        assert_eq!(points.len(), CREDIT_HISTORY_DAYS as usize);
        let height_of = |total: f64| HEIGHT as f64 - total / 115.0 * (HEIGHT - 1) as f64;
        assert!((points.last().unwrap().1 - height_of(115.0)).abs() < 0.1, "the line ends at the total");
        assert!((points[0].1 - height_of(100.0)).abs() < 0.1, "it starts at the total before the history's credit");
    }

    #[test]
    fn no_credit_draws_nothing() {
        let svg = credit_history(&[], 0.0, "2026-11-26".parse().unwrap()).svg;
        assert!(svg.starts_with("<svg") && !svg.contains("<rect") && !svg.contains("polyline"), "{svg}");
    }

    #[test]
    fn no_replicas_draw_no_bars() {
        let svg = replicas_per_hour(&[], Utc::now());
        assert!(svg.starts_with("<svg") && !svg.contains("<rect"));
    }
}
