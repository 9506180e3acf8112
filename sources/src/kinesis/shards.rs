//! The stream's shards as ListShards tells them, and what that means for the lease table: which
//! shards need a lease, and which finished shards' leases are no longer needed.

use std::collections::HashMap;

use sluice_core::aws;
use sluice_core::{SequenceNumber, SourceError};

use super::lease_table::Lease;
use super::reader::{ReaderContext, ShardInfo};

/// The shards listed, open and closed (closed ones stay listed for the stream's retention).
#[derive(Debug, Default, Clone)]
pub struct Listing {
    shards: Vec<ShardInfo>,
}

impl Listing {
    /// The shard as listed, or (not listed: past the retention) as its lease describes it.
    pub fn info(&self, id: &str, parents: &[String]) -> ShardInfo {
        self.shards
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .unwrap_or_else(|| ShardInfo {
                id: id.to_owned(),
                parents: parents.to_vec(),
                ending: None,
            })
    }

    /// Where the listing shows `id` to end, when it is closed.
    pub fn ending(&self, id: &str) -> Option<SequenceNumber> {
        self.shards
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.ending.clone())
    }

    /// The listed shards that `id` gave way to (a split's two, a merge's one).
    pub fn children(&self, id: &str) -> Vec<String> {
        self.shards
            .iter()
            .filter(|s| s.parents.iter().any(|p| p == id))
            .map(|s| s.id.clone())
            .collect()
    }
}

/// Lists the stream's shards.
pub async fn list(cx: &ReaderContext) -> Result<Listing, SourceError> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut call = cx.client.list_shards();
        call = match &token {
            Some(t) => call.next_token(t),
            None => match &cx.stream_arn {
                Some(arn) => call.stream_arn(arn),
                None => call.stream_name(&cx.stream_name),
            },
        };
        let out = call.send().await.map_err(|e| {
            SourceError::Service(format!(
                "ListShards for stream `{}` failed: {}",
                cx.stream_name,
                aws::describe_error(&e)
            ))
        })?;
        shards.extend(out.shards().iter().map(|s| {
            ShardInfo {
                id: s.shard_id().to_owned(),
                parents: s
                    .parent_shard_id()
                    .into_iter()
                    .chain(s.adjacent_parent_shard_id())
                    .map(str::to_owned)
                    .collect(),
                ending: s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .map(SequenceNumber::new),
            }
        }));
        match out.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return Ok(Listing { shards }),
        }
    }
}

/// The listed shards that need a lease: each with its parents and whether it is a child (it
/// then starts at its beginning). A shard needs one when neither it nor any descendant has a
/// lease (a finished parent whose lease was cleaned up stays covered by its children, listed or
/// not yet), and its listed parents all have (or had) leases; roots of the listing qualify.
pub fn missing(listing: &Listing, leases: &[Lease]) -> Vec<(String, Vec<String>, bool)> {
    let by_id: HashMap<&str, &ShardInfo> =
        listing.shards.iter().map(|s| (s.id.as_str(), s)).collect();
    // A shard some lease names as its parent is covered too, even when this listing is older
    // than that child (it would otherwise be read again from its start).
    let has_lease = |id: &str| {
        leases
            .iter()
            .any(|l| l.key == id || l.parents.iter().any(|p| p == id))
    };
    let mut covered: HashMap<&str, bool> = HashMap::new();
    // Children come after their parents in ListShards; walk from the newest to see descendants.
    for shard in listing.shards.iter().rev() {
        let descendant = listing
            .shards
            .iter()
            .filter(|c| c.parents.contains(&shard.id))
            .any(|c| covered.get(c.id.as_str()).copied().unwrap_or(false));
        covered.insert(&shard.id, has_lease(&shard.id) || descendant);
    }
    listing
        .shards
        .iter()
        .filter(|s| !covered[s.id.as_str()])
        .filter_map(|s| {
            let listed: Vec<&String> = s
                .parents
                .iter()
                .filter(|p| by_id.contains_key(p.as_str()))
                .collect();
            let parents_covered = listed.iter().all(|p| covered[p.as_str()]);
            parents_covered.then(|| (s.id.clone(), s.parents.clone(), !listed.is_empty()))
        })
        .collect()
}

/// Finished leases that can go: every child has a lease with a checkpoint of its own (past its
/// starting placeholder), and none of its own parents still has a lease.
pub fn finished_and_replaced(leases: &[Lease]) -> Vec<&Lease> {
    leases
        .iter()
        .filter(|l| l.is_finished())
        .filter(|l| {
            let children: Vec<&Lease> = leases
                .iter()
                .filter(|c| c.parents.contains(&l.key))
                .collect();
            !children.is_empty()
                && children.iter().all(|c| c.checkpoint.is_some())
                && !l.parents.iter().any(|p| leases.iter().any(|x| &x.key == p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Checkpoint;

    fn shard(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
            ending: None,
        }
    }

    fn lease(key: &str, parents: &[&str], checkpoint: Option<Checkpoint>) -> Lease {
        Lease {
            key: key.into(),
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
            checkpoint,
            ..Lease::default()
        }
    }

    #[test]
    fn leases_are_made_for_roots_then_for_children_of_leased_parents() {
        // 0 split into 1 and 2; 1 and 2 merged into 3.
        let listing = Listing {
            shards: vec![
                shard("0", &[]),
                shard("1", &["0"]),
                shard("2", &["0"]),
                shard("3", &["1", "2"]),
            ],
        };
        let names = |v: Vec<(String, Vec<String>, bool)>| {
            v.into_iter()
                .map(|(id, _, child)| (id, child))
                .collect::<Vec<_>>()
        };
        // An empty table: the root only.
        assert_eq!(names(missing(&listing, &[])), [("0".to_owned(), false)]);
        // With 0 leased: its children, as children.
        let with_root = [lease("0", &[], None)];
        assert_eq!(
            names(missing(&listing, &with_root)),
            [("1".to_owned(), true), ("2".to_owned(), true)]
        );
        // The merge child needs both parents leased.
        let partly = [lease("0", &[], None), lease("1", &["0"], None)];
        assert_eq!(names(missing(&listing, &partly)), [("2".to_owned(), true)]);
        // 0 finished and cleaned up, its children leased: 0 stays covered, 3 comes.
        let cleaned = [lease("1", &["0"], None), lease("2", &["0"], None)];
        assert_eq!(names(missing(&listing, &cleaned)), [("3".to_owned(), true)]);
        // A listing older than the split: 0 is covered by the children's leases all the same.
        let old = Listing {
            shards: vec![shard("0", &[])],
        };
        assert!(
            missing(&old, &cleaned).is_empty(),
            "a finished parent is not made again"
        );
    }

    #[test]
    fn a_finished_lease_goes_once_every_child_has_its_own_checkpoint() {
        let end = Some(Checkpoint::ShardEnd);
        let started = Some(Checkpoint::at(5));
        let leases = [
            lease("0", &[], end.clone()),
            lease("1", &["0"], started.clone()),
            lease("2", &["0"], None),
        ];
        assert!(
            finished_and_replaced(&leases).is_empty(),
            "2 has not started"
        );
        let leases = [
            lease("0", &[], end.clone()),
            lease("1", &["0"], started.clone()),
            lease("2", &["0"], end.clone()),
        ];
        let gone: Vec<&str> = finished_and_replaced(&leases)
            .iter()
            .map(|l| l.key.as_str())
            .collect();
        assert_eq!(gone, ["0"], "2 is finished, but has no children yet");
        // A finished shard with no child lease yet stays.
        assert!(finished_and_replaced(&[lease("9", &[], end)]).is_empty());
    }
}
