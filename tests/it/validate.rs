//! `sluice validate`: shipped files pass; typos, unknown types and unset variables are named.

use crate::{pipeline_file, root, run, sluice};

/// Pipeline files that need AWS resources; `aws_job` validates them against the emulator.
pub const AWS_PIPELINES: [&str; 3] = [
    "waze-persist.toml",
    "waze-feed.toml",
    "kinesis-archive.toml",
];

#[test]
fn every_shipped_pipeline_file_is_valid() {
    let mut checked = 0;
    for (name, path) in crate::shipped_pipelines() {
        if AWS_PIPELINES.contains(&name.as_str()) {
            continue;
        }
        let (out, stdout, stderr) = run(sluice().arg("validate").arg(&path));
        assert!(out.status.success(), "{}: {stdout}{stderr}", path.display());
        assert!(stdout.contains("valid"), "{stdout}");
        checked += 1;
    }
    assert!(checked >= 1);
}

fn local_with(from: &str, to: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(root().join("pipelines/waze-persist.local.toml")).unwrap();
    assert!(text.contains(from), "the local pipeline contains {from}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = pipeline_file(dir.path(), "broken.toml", &text.replacen(from, to, 1));
    (dir, path)
}

fn rejected(path: &std::path::Path) -> String {
    let (out, stdout, stderr) = run(sluice().arg("validate").arg(path));
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("broken.toml"), "names the file: {stderr}");
    stderr
}

#[test]
fn a_typo_in_a_key_is_named_with_the_likely_fix() {
    let (_dir, path) = local_with("table = \"curated_records\"", "tabel = \"curated_records\"");
    let err = rejected(&path);
    assert!(
        err.contains("unknown key `tabel` in `sink`") && err.contains("did you mean `table`?"),
        "{err}"
    );
}

#[test]
fn an_unknown_component_type_lists_the_known_ones() {
    let (_dir, path) = local_with("type = \"sqlite\"", "type = \"sqlitee\"");
    let err = rejected(&path);
    assert!(
        err.contains("unknown type `sqlitee`") && err.contains("`sqlite`"),
        "{err}"
    );
}

#[test]
fn an_unset_variable_names_the_key_and_the_fix() {
    let (_dir, path) = local_with("${WAZE_DB:-waze-local.db}", "${WAZE_DB_NOT_SET_ANYWHERE}");
    let err = rejected(&path);
    assert!(
        err.contains("`sink.path`")
            && err.contains("WAZE_DB_NOT_SET_ANYWHERE")
            && err.contains(":-default"),
        "{err}"
    );
}

#[test]
fn a_wrong_value_type_and_a_bad_enricher_setting_are_named() {
    let (_dir, path) = local_with("attempts = 5", "attempts = \"five\"");
    let err = rejected(&path);
    assert!(
        err.contains("`retry.attempts`") && err.contains("five"),
        "{err}"
    );
    let (_dir, path) = local_with(
        "starts_with = \"waze/\"",
        "starts_with = \"waze/\", exists = true",
    );
    let err = rejected(&path);
    assert!(
        err.contains("enrichers[0].keep_if") && err.contains("more than one test"),
        "{err}"
    );
}

#[test]
fn sluice_double_underscore_variables_override_keys_and_others_are_ignored() {
    let mut cmd = sluice();
    cmd.args(["validate", "pipelines/waze-persist.local.toml"])
        .env("SLUICE__SINK__TABLE", "other_table")
        .env("SLUICE_PIPELINE", "not/a/config/key.toml")
        .env("SLUICE_LOG", "warn");
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("table `other_table`"), "{stdout}");

    let mut cmd = sluice();
    cmd.args(["validate", "pipelines/waze-persist.local.toml"])
        .env("SLUICE__SINK__TABEL", "x");
    let (out, _, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("unknown key `tabel`") && stderr.contains("SLUICE__"),
        "{stderr}"
    );
}

/// Loads `text` as a pipeline file, with the Waze job's variables set, answering its error.
fn load_text(dir: &std::path::Path, text: &[u8]) -> Result<(), sluice::sluice_core::ConfigError> {
    let path = dir.join("fuzzed.toml");
    std::fs::write(&path, text).expect("written");
    sluice::sluice_core::Loader::new()
        .variables(|name| {
            let value = match name {
                "KINESIS_STREAM" => "waze-stream",
                "LATEST_BATCH_ID" => "/waze/latest-batch-id",
                "DDB_CURATED_RECORDS_TABLE_ARN" => "waze-curated-records",
                "DLQ_QUEUE_URL" => "https://sqs.us-east-1.amazonaws.com/123456789012/waze-dlq",
                _ => return None,
            };
            Some(value.to_owned())
        })
        .load(&path)
        .map(|_| ())
}

/// Values a hand might write where another belongs.
const ODD_VALUES: &[&str] = &[
    "\"\"",
    "\"0s\"",
    "\"-1s\"",
    "\"soon\"",
    "0",
    "-5",
    "9223372036854775807",
    "1e300",
    "true",
    "[]",
    "[1, \"a\"]",
    "{}",
    "{ field = 1 }",
    "\"${UNSET_VARIABLE\"",
    "\"{unclosed\"",
    "\"s3://{}\"",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

    /// Arbitrary bytes as a pipeline file: a configuration error naming the file, never a panic.
    #[test]
    fn arbitrary_bytes_are_a_clear_error_never_a_panic(
        text in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Err(e) = load_text(dir.path(), &text) {
            proptest::prop_assert!(e.to_string().contains("fuzzed.toml"), "{e}");
        }
    }

    /// A shipped pipeline file with one value replaced by an odd one, or one key misspelt:
    /// accepted, or refused with an error that names the file and the key.
    #[test]
    fn a_wrong_value_or_key_in_a_real_file_is_named(
        which_file in 0..2usize,
        line in proptest::prelude::any::<proptest::sample::Index>(),
        value in proptest::sample::select(ODD_VALUES),
        misspell in proptest::prelude::any::<bool>(),
    ) {
        let file = ["pipelines/waze-persist.local.toml", "pipelines/waze-persist.toml"][which_file];
        let text = std::fs::read_to_string(root().join(file)).expect("a shipped file");
        let settings: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.starts_with('#') && l.contains(" = "))
            .map(|(i, _)| i)
            .collect();
        let chosen = settings[line.index(settings.len())];
        let changed: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| match (i == chosen, l.split_once(" = ")) {
                (true, Some((key, _))) if misspell => format!("{key}x = 1"),
                (true, Some((key, _))) => format!("{key} = {value}"),
                _ => l.to_owned(),
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        if let Err(e) = load_text(dir.path(), changed.join("\n").as_bytes()) {
            let shown = e.to_string();
            proptest::prop_assert!(shown.contains("fuzzed.toml"), "{shown}");
            // The key changed (a misspelt one may be named as the one missing, or as unknown).
            let line = text.lines().nth(chosen).unwrap_or_default();
            let key = line.split(" = ").next().unwrap_or_default().trim_matches('"');
            let named = e.key.as_deref().unwrap_or_default();
            proptest::prop_assert!(
                named.contains(key) || shown.contains(key),
                "`{key}` not named: {shown} (key {named:?})\n{}",
                changed[chosen]
            );
        }
    }
}
