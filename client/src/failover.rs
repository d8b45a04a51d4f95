//! A project's server URLs, and which of them requests go to.
//!
//! A project may run several server processes on one database (BOINC's list of scheduler
//! URLs); a volunteer attached with `--mirror` knows more than one of their URLs. Requests
//! go to the URL in use, the first at start. One that cannot connect, times out or gets a
//! 5xx is tried on the next URL at once, and so on round the list; the first that answers
//! stays in use, and only when every URL failed does the caller see the error (and back
//! off). The host's identity and tokens are the project's, so they work at every URL.
//!
//! Every clone of a [`crate::api::ServerClient`] shares one [`ServerUrls`], so a failure
//! seen by an upload moves the scheduler requests on too.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct ServerUrls {
    /// The project's URL first, then its mirrors; never empty.
    urls: Vec<String>,
    in_use: AtomicUsize,
}

impl ServerUrls {
    /// The project at `primary`, also reachable at `mirrors` (tried in that order).
    pub fn new(primary: String, mirrors: Vec<String>) -> Self {
        let mut urls = vec![primary];
        for mirror in mirrors {
            if !urls.contains(&mirror) {
                urls.push(mirror);
            }
        }
        Self { urls, in_use: AtomicUsize::new(0) }
    }

    /// A server with one URL.
    pub fn single(url: String) -> Self {
        Self::new(url, Vec::new())
    }

    /// The URL the project is known by: the first.
    pub fn primary(&self) -> &str {
        &self.urls[0]
    }

    /// The URL requests go to now.
    pub fn in_use(&self) -> &str {
        &self.urls[self.in_use.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// The URLs to try for one request, in order: the one in use, then each of the others
    /// once, round the list.
    pub fn attempts(&self) -> impl ExactSizeIterator<Item = (usize, &str)> {
        let start = self.in_use.load(Ordering::Relaxed) % self.urls.len();
        (0..self.urls.len()).map(move |offset| {
            let index = (start + offset) % self.urls.len();
            (index, self.urls[index].as_str())
        })
    }

    /// A request to the URL at `index` failed: requests go to the next one from now on,
    /// unless a request that failed at the same time already moved them (several requests
    /// failing at one URL move past it once, not once each).
    pub fn failed(&self, index: usize) {
        let next = (index + 1) % self.urls.len();
        let _ = self.in_use.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(mirrors: &[&str]) -> ServerUrls {
        ServerUrls::new("https://a".into(), mirrors.iter().map(|url| url.to_string()).collect())
    }

    fn order(urls: &ServerUrls) -> Vec<&str> {
        urls.attempts().map(|(_, url)| url).collect()
    }

    #[test]
    fn requests_go_to_the_first_url_and_try_every_other_once_in_order() {
        let urls = urls(&["https://b", "https://c"]);
        assert_eq!(urls.in_use(), "https://a");
        assert_eq!(order(&urls), ["https://a", "https://b", "https://c"]);
    }

    #[test]
    fn a_failure_moves_on_and_the_url_that_works_stays_in_use() {
        let urls = urls(&["https://b", "https://c"]);
        urls.failed(0);
        assert_eq!(urls.in_use(), "https://b");
        assert_eq!(order(&urls), ["https://b", "https://c", "https://a"], "the failed one comes last");
        // b answers: nothing moves, and the next request goes to b again.
        assert_eq!(urls.in_use(), "https://b");
        urls.failed(1);
        urls.failed(2);
        assert_eq!(urls.in_use(), "https://a", "round the list");
    }

    #[test]
    fn requests_failing_together_at_one_url_move_past_it_once() {
        let urls = urls(&["https://b", "https://c"]);
        // Two requests started at a and both failed there.
        urls.failed(0);
        urls.failed(0);
        assert_eq!(urls.in_use(), "https://b", "not skipped on to c");
        // A late failure at a URL no longer in use changes nothing either.
        urls.failed(2);
        assert_eq!(urls.in_use(), "https://b");
    }

    #[test]
    fn one_url_stays_in_use_whatever_fails() {
        let urls = ServerUrls::single("https://a".into());
        urls.failed(0);
        assert_eq!(urls.in_use(), "https://a");
        assert_eq!(order(&urls), ["https://a"]);
    }

    #[test]
    fn a_mirror_repeating_a_url_is_dropped() {
        let urls = urls(&["https://a", "https://b", "https://b"]);
        assert_eq!(order(&urls), ["https://a", "https://b"]);
        assert_eq!(urls.primary(), "https://a");
    }
}
