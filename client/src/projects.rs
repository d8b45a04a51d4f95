//! The projects this host is attached to, with the secrets that authenticate it.
//! Stored in `projects.json`, readable by the volunteer only.

use serde::{Deserialize, Serialize};

use crate::data_dir::{DataDir, write_atomically};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// The server's base URL, as given to `attach` (without a trailing slash).
    pub url: String,
    pub account_id: i64,
    pub account_key: String,
    pub host_id: i64,
    pub host_token: String,
    /// This project's share of the machine, relative to the other projects'.
    pub resource_share: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Projects {
    pub projects: Vec<Project>,
}

impl Projects {
    pub fn load(data_dir: &DataDir) -> anyhow::Result<Self> {
        let path = data_dir.projects_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| anyhow::anyhow!("{} is damaged: {error}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(error.into()),
        }
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
}
