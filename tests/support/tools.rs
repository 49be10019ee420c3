//! Tools and files of the packaging and monitoring tests: the pinned tools of
//! `hack/build-tools.sh`, repository files, YAML streams, and child processes whose failure fails
//! the test with their output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The folder with helm, kstatus, promtool and the prometheus-operator CRDs:
/// `hack/build-tools.sh` (honours `GPUPOOL_TOOLS_BIN`).
pub fn tools_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo("hack/build-tools.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs hack/build-tools.sh");
        assert!(
            out.status.success(),
            "hack/build-tools.sh failed ({}); see its messages above",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .expect("hack/build-tools.sh prints the bin folder"),
        )
    })
    .clone()
}

/// helm with private config, cache and data folders (no repositories, no plugins from $HOME).
pub fn helm() -> Command {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let mut cmd = Command::new(tools_bin().join("helm"));
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    cmd
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn path_str(rel: &str) -> String {
    repo(rel).to_str().unwrap().to_string()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every non-empty document of a YAML stream, as JSON values.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    yaml_serde::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn try_run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn run(cmd: &mut Command) -> String {
    let (ok, out, err) = try_run(cmd, None);
    assert!(ok, "{cmd:?} failed:\n{err}\n{out}");
    out
}

pub fn run_with_stdin(cmd: &mut Command, input: &str) -> String {
    let (ok, out, err) = try_run(cmd, Some(input));
    assert!(ok, "{cmd:?} failed:\n{err}\n{out}");
    out
}
