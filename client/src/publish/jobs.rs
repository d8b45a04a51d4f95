//! What a batch is made of, read from the publisher's disk: a folder of inputs (one work
//! unit per file, the file as standard input) or a jobs file (one JSON object per line, see
//! `workunits/README.md`).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// One work unit as the publisher described it, with local paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub args: Vec<String>,
    pub stdin: Option<PathBuf>,
    /// Input directory entries: name there, path here.
    pub files: BTreeMap<String, PathBuf>,
}

/// One work unit per regular file directly in `dir` (hidden files skipped), named after the
/// file, in name order.
pub fn from_inputs_dir(dir: &Path) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read the inputs folder {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        jobs.push(Job { name, args: Vec::new(), stdin: Some(entry.path()), files: BTreeMap::new() });
    }
    jobs.sort_by(|a, b| a.name.cmp(&b.name));
    if jobs.is_empty() {
        bail!("the inputs folder {} holds no files", dir.display());
    }
    Ok(jobs)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLine {
    name: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    stdin: Option<PathBuf>,
    #[serde(default)]
    files: BTreeMap<String, PathBuf>,
}

/// One work unit per non-blank line of a jobs file; paths are relative to its folder.
pub fn from_jobs_file(path: &Path) -> anyhow::Result<Vec<Job>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the jobs file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut jobs = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{}:{number}: cannot read the line", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let job: JobLine =
            serde_json::from_str(&line).with_context(|| format!("{}:{number}: not a valid job", path.display()))?;
        let resolve = |relative: PathBuf| if relative.is_absolute() { relative } else { base.join(relative) };
        jobs.push(Job {
            name: job.name.unwrap_or_else(|| format!("job-{number}")),
            args: job.args,
            stdin: job.stdin.map(resolve),
            files: job.files.into_iter().map(|(name, path)| (name, resolve(path))).collect(),
        });
    }
    if jobs.is_empty() {
        bail!("the jobs file {} holds no jobs", path.display());
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(duplicate) = jobs.iter().find(|job| !seen.insert(job.name.as_str())) {
        bail!("{}: the name {:?} is used twice", path.display(), duplicate.name);
    }
    Ok(jobs)
}

impl Job {
    /// Every local file this job needs uploaded.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.stdin.iter().map(PathBuf::as_path).chain(self.files.values().map(PathBuf::as_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_gives_one_job_per_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), "2").unwrap();
        std::fs::write(dir.path().join("a"), "1").unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let jobs = from_inputs_dir(dir.path()).unwrap();
        let names: Vec<&str> = jobs.iter().map(|job| job.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(jobs[0].stdin.as_deref(), Some(dir.path().join("a").as_path()));
    }

    #[test]
    fn jobs_lines_resolve_paths_and_default_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        std::fs::write(
            &path,
            "{\"args\": [\"1\"]}\n\n{\"name\": \"two\", \"stdin\": \"in/2.txt\", \"files\": {\"p\": \"/abs/p\"}}\n",
        )
        .unwrap();
        let jobs = from_jobs_file(&path).unwrap();
        assert_eq!(jobs[0].name, "job-1");
        assert_eq!(jobs[0].args, ["1"]);
        assert_eq!(jobs[1].name, "two");
        assert_eq!(jobs[1].stdin.as_deref(), Some(dir.path().join("in/2.txt").as_path()));
        assert_eq!(jobs[1].files["p"], PathBuf::from("/abs/p"));
    }

    #[test]
    fn a_bad_line_names_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        std::fs::write(&path, "{\"args\": []}\n{\"args\": 5}\n").unwrap();
        let error = format!("{:#}", from_jobs_file(&path).unwrap_err());
        assert!(error.contains("jobs.jsonl:2"), "{error}");
        std::fs::write(&path, "{\"name\": \"x\"}\n{\"name\": \"x\"}\n").unwrap();
        let error = format!("{:#}", from_jobs_file(&path).unwrap_err());
        assert!(error.contains("used twice"), "{error}");
    }
}
