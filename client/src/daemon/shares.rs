//! Sharing the slots between projects by their resource shares, as BOINC's recent
//! estimated credit does: each project's recent work on the machine decays with a
//! half-life, and the next free slot goes to the project furthest below its share.
//!
//! Work is counted in fuel, not in seconds: tasks run at idle priority, so while the owner
//! keeps the CPU busy a task's wall-clock time grows without any work being done, and a
//! project whose task happened to be starved would be owed nothing for hours.

use std::time::{Duration, Instant};

/// How fast past use is forgotten: a project that had no work for a few days is not owed
/// the whole machine when it comes back.
const HALF_LIFE: Duration = Duration::from_secs(24 * 3600);

/// A project's recent use of the slots, in fuel burnt, decaying over time.
#[derive(Debug, Clone)]
pub struct RecentUse {
    fuel: f64,
    as_of: Instant,
}

impl Default for RecentUse {
    fn default() -> Self {
        Self { fuel: 0.0, as_of: Instant::now() }
    }
}

impl RecentUse {
    pub fn at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.as_of).as_secs_f64();
        self.fuel * 0.5f64.powf(elapsed / HALF_LIFE.as_secs_f64())
    }

    pub fn add(&mut self, fuel: u64) {
        let now = Instant::now();
        self.fuel = self.at(now) + fuel as f64;
        self.as_of = now;
    }
}

/// Which project gets the next slot: the one whose use so far (finished and running), per
/// unit of resource share, is lowest, among those with a task ready. `projects` holds each
/// one's use in fuel and its share; ties go to the larger share, then the first.
pub fn next_project(projects: &[(f64, f64)], ready: impl Fn(usize) -> bool) -> Option<usize> {
    let priority = |&(used, share): &(f64, f64)| if share > 0.0 { used / share } else { f64::INFINITY };
    (0..projects.len()).filter(|&index| ready(index)).min_by(|&a, &b| {
        priority(&projects[a])
            .total_cmp(&priority(&projects[b]))
            .then(projects[b].1.total_cmp(&projects[a].1))
            .then(a.cmp(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One slot, tasks of equal length, shares 300 and 100: three for one, one for the other.
    #[test]
    fn slots_go_to_projects_in_proportion_to_their_shares() {
        let mut used = [(0.0, 300.0), (0.0, 100.0)];
        let mut runs = [0, 0];
        for _ in 0..400 {
            let next = next_project(&used, |_| true).unwrap();
            used[next].0 += 1.0;
            runs[next] += 1;
        }
        assert_eq!(runs, [300, 100]);
    }

    #[test]
    fn a_project_without_work_ready_is_passed_over_and_a_zero_share_comes_last() {
        let used = [(0.0, 100.0), (50.0, 100.0), (0.0, 0.0)];
        assert_eq!(next_project(&used, |index| index != 0), Some(1));
        assert_eq!(next_project(&used, |index| index == 2), Some(2));
        assert_eq!(next_project(&used, |_| false), None);
    }

    #[test]
    fn past_use_fades_with_the_half_life() {
        let mut recent = RecentUse::default();
        recent.add(100);
        let later = recent.as_of + HALF_LIFE;
        assert!((recent.at(later) - 50.0).abs() < 1e-9);
    }
}
