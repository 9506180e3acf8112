//! `deploy/template.yaml`: valid CloudFormation (cfn-lint), with the resources the Lambda
//! deployment needs and an IAM policy granting only the calls sluice makes.

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

/// The template as JSON, through cfn-lint's own loader (which resolves `!Ref` and friends).
fn template(cfn_lint: &std::path::Path) -> Value {
    let python = cfn_lint.with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys\nfrom cfnlint.decode import decode\ntemplate, errors = decode(sys.argv[1])\nassert not errors, errors\nprint(json.dumps(template, default=str))",
        ])
        .arg(root().join("deploy/template.yaml"))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
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
    let out = Command::new(&cfn_lint)
        .arg(root().join("deploy/template.yaml"))
        .output()
        .expect("cfn-lint runs");
    assert!(
        out.status.success(),
        "cfn-lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t = template(&cfn_lint);

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
    let role = one(&t, "AWS::IAM::Role");
    let mut actions = BTreeSet::new();
    for policy in role["Policies"].as_array().unwrap() {
        for statement in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            let listed: Vec<&str> = match &statement["Action"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().map(|a| a.as_str().unwrap()).collect(),
                other => panic!("{other}"),
            };
            actions.extend(listed);
            assert!(
                !statement["Resource"].to_string().contains('*'),
                "{statement}"
            );
        }
    }
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
    assert_eq!(actions, expected);
}
