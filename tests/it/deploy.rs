//! `deploy/`: the Lambda template and the Fargate fleet template are valid CloudFormation
//! (cfn-lint), hold the resources their deployment needs, and grant only the calls sluice makes;
//! the container image runs without a shell.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::root;

/// The variable `scripts/test` sets to the cfn-lint it installs into `.venv`.
const CFN_LINT_VAR: &str = "SLUICE_TEST_CFN_LINT";

fn cfn_lint() -> Option<PathBuf> {
    match std::env::var(CFN_LINT_VAR) {
        Ok(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{CFN_LINT_VAR} is not set but CI=true: run the tests with `bash scripts/test`")
        }
        _ => {
            eprintln!("note: {CFN_LINT_VAR} is not set; the template was not checked");
            None
        }
    }
}

/// Runs cfn-lint on a template of `deploy/` and answers it as JSON, through cfn-lint's own
/// loader (which resolves `!Ref` and friends).
fn linted(cfn_lint: &std::path::Path, name: &str) -> Value {
    let out = Command::new(cfn_lint)
        .arg(root().join("deploy").join(name))
        .output()
        .expect("cfn-lint runs");
    assert!(
        out.status.success(),
        "cfn-lint {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    template(cfn_lint, name)
}

fn template(cfn_lint: &std::path::Path, name: &str) -> Value {
    let python = cfn_lint.with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys\nfrom cfnlint.decode import decode\ntemplate, errors = decode(sys.argv[1])\nassert not errors, errors\nprint(json.dumps(template, default=str))",
        ])
        .arg(root().join("deploy").join(name))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The actions a role's inline policies allow; fails on a wildcard resource.
fn allowed(role: &Value) -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    for policy in role["Policies"].as_array().unwrap() {
        for statement in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            match &statement["Action"] {
                Value::String(a) => actions.insert(a.clone()),
                Value::Array(a) => {
                    actions.extend(a.iter().map(|a| a.as_str().unwrap().to_owned()));
                    true
                }
                other => panic!("{other}"),
            };
            assert!(
                !statement["Resource"].to_string().contains('*'),
                "{statement}"
            );
        }
    }
    actions
}

fn resources<'a>(t: &'a Value, kind: &str) -> Vec<&'a Value> {
    t["Resources"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["Type"] == kind)
        .map(|r| &r["Properties"])
        .collect()
}

fn one<'a>(t: &'a Value, kind: &str) -> &'a Value {
    let found = resources(t, kind);
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

#[test]
fn the_template_passes_cfn_lint_and_holds_what_the_function_needs() {
    let Some(cfn_lint) = cfn_lint() else { return };
    let t = linted(&cfn_lint, "template.yaml");

    let function = one(&t, "AWS::Lambda::Function");
    assert_eq!(function["Runtime"], "provided.al2023");
    assert_eq!(function["Handler"], "bootstrap");
    let env = function["Environment"]["Variables"].as_object().unwrap();
    for name in [
        "SLUICE_PIPELINE",
        "LATEST_BATCH_ID",
        "DDB_CURATED_RECORDS_TABLE_ARN",
        "PERSIST_RECORDS",
        "DLQ_QUEUE_URL",
    ] {
        assert!(env.contains_key(name), "the function sets {name}");
    }
    assert!(root()
        .join(env["SLUICE_PIPELINE"].as_str().unwrap())
        .is_file());

    let mapping = one(&t, "AWS::Lambda::EventSourceMapping");
    assert_eq!(
        mapping["FunctionResponseTypes"],
        serde_json::json!(["ReportBatchItemFailures"])
    );
    assert_eq!(mapping["BisectBatchOnFunctionError"], true);
    let retries = mapping["MaximumRetryAttempts"]
        .as_i64()
        .expect("retries are bounded");
    assert!((0..=10_000).contains(&retries));
    let age = mapping["MaximumRecordAgeInSeconds"]
        .as_i64()
        .expect("record age is bounded");
    assert!((60..=604_800).contains(&age));
    assert!(mapping["DestinationConfig"]["OnFailure"]["Destination"].is_object());

    let table = one(&t, "AWS::DynamoDB::Table");
    assert_eq!(table["KeySchema"][0]["AttributeName"], "CurationRecordId");
    let index = &table["GlobalSecondaryIndexes"][0]["KeySchema"];
    assert_eq!(
        (&index[0]["AttributeName"], &index[0]["KeyType"]),
        (&"BatchId".into(), &"HASH".into())
    );
    assert_eq!(
        (&index[1]["AttributeName"], &index[1]["KeyType"]),
        (&"DataTableName".into(), &"RANGE".into())
    );
    one(&t, "AWS::SSM::Parameter");
    assert_eq!(
        resources(&t, "AWS::SQS::Queue").len(),
        2,
        "the DLQ and the on-failure queue"
    );

    // Least privilege: exactly the calls made (SendMessageBatch is authorised as SendMessage;
    // the Kinesis reads are the event source mapping's), never a wildcard.
    let actions = allowed(one(&t, "AWS::IAM::Role"));
    let expected: BTreeSet<&str> = [
        "kinesis:DescribeStream",
        "kinesis:DescribeStreamSummary",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
        "ssm:GetParameter",
        "dynamodb:DescribeTable",
        "dynamodb:BatchWriteItem",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    ]
    .into();
    assert_eq!(actions, expected.iter().map(|a| a.to_string()).collect());
}

#[test]
fn the_fleet_template_runs_daemons_with_health_checks_and_least_privilege() {
    let Some(cfn_lint) = cfn_lint() else { return };
    let t = linted(&cfn_lint, "fleet.yaml");

    let service = one(&t, "AWS::ECS::Service");
    assert_eq!(service["LaunchType"], "FARGATE");
    let task = one(&t, "AWS::ECS::TaskDefinition");
    let container = &task["ContainerDefinitions"][0];
    assert_eq!(
        container["HealthCheck"]["Command"],
        serde_json::json!(["CMD", "/sluice", "probe", "http://127.0.0.1:9090/health"]),
        "checked by the binary itself: the image has no shell"
    );
    let env: BTreeSet<&str> = container["Environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap())
        .collect();
    for name in [
        "KINESIS_STREAM",
        "LATEST_BATCH_ID",
        "DDB_CURATED_RECORDS_TABLE_ARN",
        "DLQ_QUEUE_URL",
        "SLUICE__SOURCE__CHECKPOINT_TABLE",
        "SLUICE_METRICS_ADDR",
    ] {
        assert!(env.contains(name), "the daemon gets {name}");
    }
    assert!(
        container["StopTimeout"].as_i64().unwrap() >= 30,
        "time to hand leases over"
    );
    let lease_table = one(&t, "AWS::DynamoDB::Table");
    assert_eq!(lease_table["KeySchema"][0]["AttributeName"], "leaseKey");

    // The task role: exactly what the daemon calls (TransactWriteItems is authorised per item,
    // as UpdateItem), on its own resources only.
    let roles = resources(&t, "AWS::IAM::Role");
    let task_role = roles
        .iter()
        .find(|r| r.get("Policies").is_some())
        .expect("the task role");
    let expected: BTreeSet<String> = [
        "kinesis:DescribeStreamSummary",
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
        "ssm:GetParameter",
        "dynamodb:DescribeTable",
        "dynamodb:BatchWriteItem",
        "dynamodb:Scan",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    assert_eq!(allowed(task_role), expected);
}

/// `deploy/Dockerfile`: a static binary on an empty base, started and checked without a shell.
#[test]
fn the_image_runs_the_daemon_without_a_shell_and_not_as_root() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let last_from = lines.iter().rev().find(|l| l.starts_with("FROM ")).unwrap();
    assert_eq!(
        *last_from, "FROM scratch",
        "nothing but the binary at run time"
    );
    let instruction = |name: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} in the Dockerfile"))
            .trim_start()
            .to_owned()
    };
    assert!(
        instruction("ENTRYPOINT").contains(r#"["/sluice""#),
        "exec form"
    );
    let check = text
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a health check")
        .lines()
        .find(|l| l.contains("CMD"))
        .unwrap();
    assert!(
        check.contains(r#"["/sluice", "probe""#),
        "exec form, no shell: {check}"
    );
    assert!(!instruction("USER").contains(" 0"), "not root");
    assert!(
        text.contains("--target x86_64-unknown-linux-musl"),
        "static"
    );
    assert!(
        text.contains("ca-certificates.crt"),
        "TLS roots for the AWS APIs"
    );
}
