//! Numbers, dates and sizes as people read them on the pages.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Credit with two decimals and thin groups of thousands: `12,345.68`.
pub fn credit(value: f64) -> String {
    let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
    let fixed = format!("{value:.2}");
    let (whole, fraction) = fixed.split_once('.').unwrap_or((&fixed, "00"));
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{grouped}.{fraction}")
}

pub fn date_time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `3 d 4 h`, `2 h 5 min`, `40 s`.
pub fn duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {minutes} min")
    } else if minutes > 0 {
        format!("{minutes} min")
    } else {
        format!("{seconds} s")
    }
}

/// Bytes in GiB or MiB.
pub fn memory(bytes: i64) -> String {
    let bytes = bytes.max(0) as f64;
    if bytes >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_grouped_and_rounded() {
        assert_eq!(credit(0.0), "0.00");
        assert_eq!(credit(999.999), "1,000.00");
        assert_eq!(credit(1234567.891), "1,234,567.89");
        assert_eq!(credit(f64::NAN), "0.00");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration(Duration::from_secs(40)), "40 s");
        assert_eq!(duration(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(duration(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3 d 4 h");
        assert_eq!(memory(8 << 30), "8.0 GiB");
        assert_eq!(memory(512 << 20), "512 MiB");
    }
}
