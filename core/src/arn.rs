//! Names and regions out of ARNs: settings take a resource's name or its ARN.

/// The region in an ARN (`arn:aws:dynamodb:eu-west-1:...` gives `eu-west-1`); `None` for a name.
pub fn region_from_arn(name_or_arn: &str) -> Option<&str> {
    name_or_arn
        .strip_prefix("arn:")
        .and_then(|arn| arn.split(':').nth(2))
        .filter(|r| !r.is_empty())
}

/// The name of a resource given by name or ARN: the part after `:table/`, `:stream/`, and so on.
pub fn name_from_arn<'a>(name_or_arn: &'a str, resource: &str) -> &'a str {
    if !name_or_arn.starts_with("arn:") {
        return name_or_arn;
    }
    let marker = format!(":{resource}/");
    match name_or_arn.find(&marker) {
        Some(i) => {
            let rest = &name_or_arn[i + marker.len()..];
            rest.split('/').next().unwrap_or(rest)
        }
        None => name_or_arn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_out_of_arns() {
        let arn = "arn:aws:dynamodb:us-east-1:123456789012:table/curated-records";
        assert_eq!(name_from_arn(arn, "table"), "curated-records");
        let with_index = "arn:aws:dynamodb:us-east-1:1:table/t/index/BatchId";
        assert_eq!(name_from_arn(with_index, "table"), "t");
        assert_eq!(name_from_arn("plain-name", "table"), "plain-name");
        assert_eq!(region_from_arn(arn), Some("us-east-1"));
        assert_eq!(region_from_arn("plain-name"), None);
        assert_eq!(
            name_from_arn("arn:aws:kinesis:us-east-1:1:stream/waze", "stream"),
            "waze"
        );
    }
}
