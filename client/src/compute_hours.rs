//! `compute_hours`: the times of day, in local time, when the daemon may compute, as BOINC's
//! "compute only between" preference, with days of the week.
//!
//! A window is written `HH:MM-HH:MM`, optionally after the days it applies to:
//! `08:00-18:00` (every day), `mon-fri 09:00-17:30`, `sat,sun 00:00-24:00`. A window whose
//! end is before its start runs past midnight (`22:00-06:00`) and belongs to the day it
//! starts on. Computing is allowed while any window holds; with no windows, always.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDateTime, Timelike};
use serde::{Deserialize, Serialize};

const MINUTES_PER_DAY: u16 = 24 * 60;
const DAY_NAMES: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

/// One window of allowed computing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HoursWindow {
    /// Monday first.
    days: [bool; 7],
    start_minute: u16,
    end_minute: u16,
    /// As written, for `status` and for saving back.
    text: String,
}

impl HoursWindow {
    /// Whether `now` (local time) is inside the window.
    pub fn contains(&self, now: NaiveDateTime) -> bool {
        let minute = (now.hour() * 60 + now.minute()) as u16;
        let today = now.weekday().num_days_from_monday() as usize;
        let yesterday = (today + 6) % 7;
        if self.start_minute < self.end_minute {
            self.days[today] && (self.start_minute..self.end_minute).contains(&minute)
        } else {
            // Past midnight: the evening part today, the morning part from yesterday's start.
            (self.days[today] && minute >= self.start_minute) || (self.days[yesterday] && minute < self.end_minute)
        }
    }
}

/// Whether computing is allowed at `now`, by `windows` (always, when there are none).
pub fn allowed(windows: &[HoursWindow], now: NaiveDateTime) -> bool {
    windows.is_empty() || windows.iter().any(|window| window.contains(now))
}

impl FromStr for HoursWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid =
            |why: &str| format!("invalid compute_hours window {text:?}: {why} (like \"mon-fri 08:00-18:00\")");
        let mut words = text.split_whitespace();
        let (days, hours) = match (words.next(), words.next(), words.next()) {
            (Some(hours), None, None) => ([true; 7], hours),
            (Some(days), Some(hours), None) => (parse_days(days).map_err(|why| invalid(&why))?, hours),
            _ => return Err(invalid("expected [DAYS] HH:MM-HH:MM")),
        };
        let (start, end) = hours.split_once('-').ok_or_else(|| invalid("expected HH:MM-HH:MM"))?;
        let start_minute = parse_time(start).map_err(|why| invalid(&why))?;
        let end_minute = parse_time(end).map_err(|why| invalid(&why))?;
        if start_minute == end_minute {
            return Err(invalid("the window is empty"));
        }
        if start_minute == MINUTES_PER_DAY {
            return Err(invalid("a window cannot start at 24:00"));
        }
        Ok(Self { days, start_minute, end_minute, text: text.split_whitespace().collect::<Vec<_>>().join(" ") })
    }
}

impl TryFrom<String> for HoursWindow {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<HoursWindow> for String {
    fn from(window: HoursWindow) -> Self {
        window.text
    }
}

impl fmt::Display for HoursWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `mon-fri`, `sat,sun`, `mon,wed-fri`.
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    // The full name or its first three letters.
    let day = |name: &str| {
        let name = name.to_ascii_lowercase();
        DAY_NAMES
            .iter()
            .position(|day| name == *day || (name.len() == 3 && day.starts_with(&name)))
            .ok_or_else(|| format!("unknown day {name:?}"))
    };
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (day(first)?, day(last)?);
                let mut index = first;
                loop {
                    days[index] = true;
                    if index == last {
                        break;
                    }
                    index = (index + 1) % 7;
                }
            }
            None => days[day(part)?] = true,
        }
    }
    Ok(days)
}

/// `HH:MM`, from `00:00` to `24:00`, as minutes since midnight.
fn parse_time(text: &str) -> Result<u16, String> {
    let (hours, minutes) = text.split_once(':').ok_or_else(|| format!("{text:?} is not HH:MM"))?;
    let hours: u16 = hours.parse().map_err(|_| format!("{text:?} is not HH:MM"))?;
    let minutes: u16 = minutes.parse().map_err(|_| format!("{text:?} is not HH:MM"))?;
    if minutes >= 60 || hours > 24 || (hours == 24 && minutes > 0) {
        return Err(format!("{text:?} is not a time of day"));
    }
    Ok(hours * 60 + minutes)
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    /// 2026-12-07 is a Monday.
    fn at(day_of_december: u32, hour: u32, minute: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 12, day_of_december).unwrap().and_hms_opt(hour, minute, 0).unwrap()
    }

    fn window(text: &str) -> HoursWindow {
        text.parse().unwrap()
    }

    #[test]
    fn a_window_holds_from_its_start_up_to_its_end_on_its_days() {
        let office = window("mon-fri 08:00-18:00");
        assert!(office.contains(at(7, 8, 0)));
        assert!(office.contains(at(11, 17, 59)));
        assert!(!office.contains(at(7, 18, 0)));
        assert!(!office.contains(at(7, 7, 59)));
        assert!(!office.contains(at(12, 12, 0)), "Saturday");
        assert!(window("08:00-18:00").contains(at(13, 12, 0)), "every day");
        assert!(window("sat,sun 00:00-24:00").contains(at(13, 23, 59)));
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts_on() {
        let nights = window("fri 22:00-06:00");
        assert!(nights.contains(at(11, 23, 0)), "Friday evening");
        assert!(nights.contains(at(12, 5, 59)), "Saturday morning");
        assert!(!nights.contains(at(11, 5, 0)), "Friday morning belongs to Thursday");
        assert!(!nights.contains(at(12, 23, 0)));
        assert!(window("sun-mon 23:00-01:00").contains(at(8, 0, 30)), "a day range wraps over the week's end");
    }

    #[test]
    fn computing_is_allowed_in_any_window_and_always_without_one() {
        let windows = [window("mon 08:00-09:00"), window("tue 10:00-11:00")];
        assert!(allowed(&windows, at(8, 10, 30)));
        assert!(!allowed(&windows, at(8, 8, 30)));
        assert!(allowed(&[], at(8, 3, 0)));
    }

    #[test]
    fn malformed_windows_are_refused_with_the_reason() {
        for bad in ["8-18", "25:00-26:00", "08:00-08:00", "someday 08:00-09:00", "mon 08:00", "08:60-09:00", ""] {
            let error = bad.parse::<HoursWindow>().unwrap_err();
            assert!(error.contains("compute_hours"), "{bad}: {error}");
        }
        let settings: Result<Vec<HoursWindow>, _> = serde_json::from_str(r#"["mon-fri 08:00-18:00", "x"]"#);
        assert!(settings.is_err());
        assert_eq!(window("Mon-Fri   08:00-18:00").to_string(), "Mon-Fri 08:00-18:00");
    }
}
