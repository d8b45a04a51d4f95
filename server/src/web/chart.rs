//! The status page's chart of replicas reported per hour, drawn as SVG on the server: no
//! script, nothing for the Content-Security-Policy to allow, and it prints.
//!
//! The markup is built from numbers only, so it can be inserted into the page unescaped.

use std::fmt::Write;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use wasmgrid_protocol::stats::HourCount;

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
    let bar = WIDTH / HOURS;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Replicas reported per hour, busiest hour {busiest}">"#
    );
    for (i, count) in counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let height = (count * (HEIGHT - 1) / busiest).max(1);
        let x = i as i64 * bar;
        let y = HEIGHT - height;
        let _ =
            write!(svg, r#"<rect x="{x}" y="{y}" width="{}" height="{height}"><title>{count}</title></rect>"#, bar - 1);
    }
    svg.push_str("</svg>");
    svg
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
    fn no_replicas_draw_no_bars() {
        let svg = replicas_per_hour(&[], Utc::now());
        assert!(svg.starts_with("<svg") && !svg.contains("<rect"));
    }
}
