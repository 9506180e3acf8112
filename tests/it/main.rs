//! Tests of the `sluice` binary: the local Waze job, the AWS job on the emulator, the CLI and
//! pipeline-file validation.

mod aws_job;
mod chaos;
mod cli;
mod custom_sink;
mod daemon;
mod deploy;
mod feed_job;
mod lambda;
mod lambda_binary;
mod local_job;
mod offline;
mod redrive;
mod s3_jobs;
mod schema;
mod validate;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (the tests run the binary from there, as the README does).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `sluice` binary, run from the repository root with no pipeline variables inherited.
pub fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.current_dir(root());
    for (name, _) in std::env::vars() {
        if name.starts_with("WAZE_") || name.starts_with("SLUICE") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The shipped pipeline files (`pipelines/*.toml`, not the `.tests.toml` beside them), by name.
pub fn shipped_pipelines() -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(root().join("pipelines"))
        .expect("pipelines/")
        .map(|entry| entry.expect("entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_string_lossy().into_owned();
            (name.ends_with(".toml") && !name.ends_with(".tests.toml")).then_some((name, path))
        })
        .collect();
    files.sort();
    files
}

/// Runs a command and returns its output, with stdout and stderr as text.
pub fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("the sluice binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Writes a pipeline file into `dir`.
pub fn pipeline_file(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml).expect("pipeline file written");
    path
}
