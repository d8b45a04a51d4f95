//! A one-line progress bar on standard error, drawn only when standard error is a terminal
//! (scripts get the final result alone), and at most ten times a second.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const WIDTH: usize = 30;
const REDRAW_EVERY: Duration = Duration::from_millis(100);

pub struct ProgressBar {
    label: String,
    total: u64,
    enabled: bool,
    last_drawn: Option<Instant>,
}

impl ProgressBar {
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        Self { label: label.into(), total, enabled: std::io::stderr().is_terminal(), last_drawn: None }
    }

    /// Redraws with `done` of the total, plus a note after the counts.
    pub fn set(&mut self, done: u64, note: &str) {
        if !self.enabled || self.last_drawn.is_some_and(|at| at.elapsed() < REDRAW_EVERY) && done < self.total {
            return;
        }
        self.last_drawn = Some(Instant::now());
        eprint!("\r\x1b[2K{}", render(&self.label, done, self.total, note));
        let _ = std::io::stderr().flush();
    }

    /// Leaves the bar's last state on its line.
    pub fn finish(&mut self) {
        if self.enabled && self.last_drawn.is_some() {
            eprintln!();
        }
    }
}

/// `label [#####-----]  45%  450/1000 note`
pub fn render(label: &str, done: u64, total: u64, note: &str) -> String {
    let fraction = if total == 0 { 1.0 } else { (done as f64 / total as f64).clamp(0.0, 1.0) };
    let filled = (fraction * WIDTH as f64).round() as usize;
    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH - filled));
    let percent = (fraction * 100.0).floor();
    let mut line = format!("{label} [{bar}] {percent:>3}% {done}/{total}");
    if !note.is_empty() {
        line.push(' ');
        line.push_str(note);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_fraction_done() {
        assert_eq!(render("x", 0, 10, ""), format!("x [{}]   0% 0/10", "-".repeat(30)));
        assert_eq!(render("x", 5, 10, "ok"), format!("x [{}{}]  50% 5/10 ok", "#".repeat(15), "-".repeat(15)));
        assert_eq!(render("x", 0, 0, ""), format!("x [{}] 100% 0/0", "#".repeat(30)));
    }
}
