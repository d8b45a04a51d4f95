//! The projects this host is attached to, with the secrets that authenticate it.
//! Stored in `projects.json`, readable by the volunteer only.
//!
//! A project is known by the URL it was attached at; its tasks and pinned keys are filed
//! under it. It may list mirrors too: more URLs of the same project (server processes on
//! its database), which requests fail over to (see [`crate::failover`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::data_dir::{DataDir, read_json_or_default, write_atomically};
use crate::failover::ServerUrls;
use crate::state::{ClientState, Phase, Task};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// The server's base URL, as given to `attach` (without a trailing slash).
    pub url: String,
    /// Other URLs of the same project, tried in order when the one in use fails (`attach
    /// --mirror`). Absent from files written before mirrors existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    pub account_id: i64,
    pub account_key: String,
    pub host_id: i64,
    pub host_token: String,
    /// This project's share of the machine, relative to the other projects'.
    pub resource_share: f64,
}

impl Project {
    /// Every URL of the project: its own, then its mirrors.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.url.as_str()).chain(self.mirrors.iter().map(String::as_str))
    }

    /// Its URLs, for a client that fails over between them.
    pub fn server_urls(&self) -> ServerUrls {
        ServerUrls::new(self.url.clone(), self.mirrors.clone())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Projects {
    pub projects: Vec<Project>,
}

impl Projects {
    pub fn load(data_dir: &DataDir) -> anyhow::Result<Self> {
        read_json_or_default(&data_dir.projects_file())
    }

    pub fn save(&self, data_dir: &DataDir) -> anyhow::Result<()> {
        write_atomically(&data_dir.projects_file(), &serde_json::to_vec_pretty(self)?)
    }

    pub fn find(&self, url: &str) -> Option<&Project> {
        let url = normalize_url(url);
        self.projects.iter().find(|project| project.url == url)
    }

    /// Adds or replaces the project with the same URL.
    pub fn upsert(&mut self, project: Project) {
        self.projects.retain(|existing| existing.url != project.url);
        self.projects.push(project);
    }

    /// Removes a project; `false` if it was not attached.
    pub fn remove(&mut self, url: &str) -> bool {
        let url = normalize_url(url);
        let before = self.projects.len();
        self.projects.retain(|project| project.url != url);
        self.projects.len() != before
    }
}

pub fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

/// Plain HTTP leaks the host token to anyone on the path; it is allowed only to this
/// machine unless the volunteer insists.
pub fn check_transport(url: &str, allow_insecure: bool) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|error| anyhow::anyhow!("{url} is not a URL: {error}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure || is_loopback(&parsed) => Ok(()),
        "http" => anyhow::bail!(
            "{url} uses plain http to another machine; use https, or pass --allow-insecure if you accept that \
             your host token can be read on the way"
        ),
        other => anyhow::bail!("{url}: unsupported scheme {other:?}"),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        // ::ffff:127.0.0.1 is the IPv4 loopback written as IPv6.
        Some(url::Host::Ipv6(address)) => {
            address.is_loopback() || address.to_ipv4_mapped().is_some_and(|ipv4| ipv4.is_loopback())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_loopback_unless_allowed() {
        assert!(check_transport("https://grid.example.org", false).is_ok());
        assert!(check_transport("http://127.0.0.1:8080", false).is_ok());
        assert!(check_transport("http://127.0.0.5:8080", false).is_ok());
        assert!(check_transport("http://localhost:8080", false).is_ok());
        assert!(check_transport("http://[::1]:8080", false).is_ok());
        assert!(check_transport("http://[::ffff:127.0.0.1]:8080", false).is_ok());
        assert!(check_transport("http://[::ffff:192.0.2.1]:8080", false).is_err());
        assert!(check_transport("http://localhost.example.org", false).is_err());
        assert!(check_transport("http://grid.example.org", false).is_err());
        assert!(check_transport("http://192.168.1.10", false).is_err());
        assert!(check_transport("http://grid.example.org", true).is_ok());
        assert!(check_transport("ftp://grid.example.org", true).is_err());
    }

    fn project(mirrors: &[&str]) -> Project {
        Project {
            url: "https://a.example.org".into(),
            mirrors: mirrors.iter().map(|url| url.to_string()).collect(),
            account_id: 1,
            account_key: "key".into(),
            host_id: 2,
            host_token: "token".into(),
            resource_share: 100.0,
        }
    }

    #[test]
    fn a_projects_file_written_before_mirrors_still_loads() {
        let old = r#"{"projects":[{"url":"https://a.example.org","account_id":1,"account_key":"key",
            "host_id":2,"host_token":"token","resource_share":100.0}]}"#;
        let projects: Projects = serde_json::from_str(old).unwrap();
        assert_eq!(projects.projects, [project(&[])]);
        assert_eq!(projects.projects[0].urls().collect::<Vec<_>>(), ["https://a.example.org"]);
    }

    #[test]
    fn mirrors_are_kept_in_order_and_left_out_of_the_file_when_there_are_none() {
        let with_mirrors = Projects { projects: vec![project(&["https://b.example.org", "https://c.example.org"])] };
        let json = serde_json::to_string(&with_mirrors).unwrap();
        let loaded: Projects = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded.projects, with_mirrors.projects);
        let urls: Vec<&str> = loaded.projects[0].urls().collect();
        assert_eq!(urls, ["https://a.example.org", "https://b.example.org", "https://c.example.org"]);

        let json = serde_json::to_string(&Projects { projects: vec![project(&[])] }).unwrap();
        assert!(!json.contains("mirrors"), "{json}");
    }
}

/// What detaching from a project abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    pub url: String,
    pub tasks: usize,
    /// Of those, the finished ones never reported.
    pub unreported: usize,
}

impl fmt::Display for Detached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tasks == 0 {
            write!(f, "detached from {}", self.url)
        } else {
            write!(
                f,
                "detached from {}, abandoning {} tasks ({} finished but not reported)",
                self.url, self.tasks, self.unreported
            )
        }
    }
}

/// Forgets the project at `url` and abandons its tasks in `state`, on disk too: nobody would
/// run or report them any more, and a task left pending would keep `run --exit-when-idle`
/// from ever being idle. The server hands abandoned replicas to someone else once their
/// deadline passes. `None` when not attached to it. Whoever holds `state` must stop the
/// project's running tasks first.
pub fn detach(data_dir: &DataDir, state: &mut ClientState, url: &str) -> anyhow::Result<Option<Detached>> {
    let mut projects = Projects::load(data_dir)?;
    if !projects.remove(url) {
        return Ok(None);
    }
    let abandoned: Vec<Task> = state.tasks.values().filter(|task| task.project_url == url).cloned().collect();
    state.tasks.retain(|_, task| task.project_url != url);
    // The tasks go first: a crash in between leaves an attached project with no tasks
    // rather than tasks of a project that is gone.
    state.save(data_dir)?;
    projects.save(data_dir)?;
    // Attaching again is a first use again.
    crate::pinned_keys::KeyStore::update(data_dir, |keys| keys.projects.remove(url))?;
    for task in &abandoned {
        let task_dir = data_dir.task(&task.id());
        let _ = std::fs::remove_dir_all(&task_dir);
        // The project's directory, once empty.
        let _ = task_dir.parent().map(std::fs::remove_dir);
    }
    let unreported = abandoned.iter().filter(|task| matches!(task.phase, Phase::Finished { .. })).count();
    Ok(Some(Detached { url: url.to_owned(), tasks: abandoned.len(), unreported }))
}
