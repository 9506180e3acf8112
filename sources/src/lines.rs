//! JSON lines into batches: one record per line, positions are 1-based line numbers. A stop
//! ends the lines at a line boundary (complete lines already read still come out) and the batch
//! being filled is handed out, so nothing read is dropped.

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use sluice_core::{
    BatchSettings, Encoding, Meta, RawRecord, SequenceNumber, Shutdown, SourceBatch, SourceError,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Where the lines come from, for each record's meta.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub source: &'static str,
    pub stream: String,
    pub shard_id: String,
}

/// Reads `reader` line by line until its end or `stop`; blank lines are skipped (they are not
/// records) but keep their number.
pub(crate) fn json_lines<R>(
    reader: BufReader<R>,
    origin: Origin,
    settings: BatchSettings,
    stop: Shutdown,
) -> BoxStream<'static, Result<SourceBatch, SourceError>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let what = format!("{} {}", origin.source, origin.stream);
    let records = stream::try_unfold((reader, 0u64), move |(mut reader, mut line_no)| {
        let what = what.clone();
        let stop = stop.clone();
        async move {
            loop {
                let mut line = Vec::new();
                // A line already in the buffer is read whatever happens; waiting for more input
                // ends at a stop (a partial line read so far is not a record).
                let buffered = reader.buffer().contains(&b'\n');
                if stop.is_triggered() && !buffered {
                    return Ok(None);
                }
                let read = if buffered {
                    reader.read_until(b'\n', &mut line).await
                } else {
                    tokio::select! {
                        read = reader.read_until(b'\n', &mut line) => read,
                        _ = stop.triggered() => return Ok(None),
                    }
                };
                let read = read.map_err(|source| SourceError::Io {
                    what: what.clone(),
                    source,
                })?;
                if read == 0 {
                    return Ok(None);
                }
                line_no += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(((line_no, Bytes::from(line)), (reader, line_no))));
            }
        }
    });
    let origin_for_records = origin.clone();
    let records = records.map(move |item| {
        item.map(|(line_no, data)| RawRecord {
            data,
            encoding: Encoding::Raw,
            meta: Meta {
                source: origin_for_records.source.to_owned(),
                stream: origin_for_records.stream.clone(),
                shard_id: origin_for_records.shard_id.clone(),
                sequence_number: SequenceNumber::from(line_no),
                ..Meta::default()
            },
        })
    });
    let shard_id = origin.shard_id;
    tokio_stream::StreamExt::chunks_timeout(records, settings.max_records, settings.max_age)
        .flat_map(move |chunk| stream::iter(into_batches(&shard_id, chunk)))
        .boxed()
}

/// A chunk of read results as batches: the records before an error, then the error.
fn into_batches(
    shard_id: &str,
    chunk: Vec<Result<RawRecord, SourceError>>,
) -> Vec<Result<SourceBatch, SourceError>> {
    let mut records = Vec::with_capacity(chunk.len());
    let mut error = None;
    for item in chunk {
        match item {
            Ok(r) => records.push(r),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let mut out = Vec::new();
    if !records.is_empty() {
        out.push(Ok(SourceBatch {
            shard_id: shard_id.to_owned(),
            records,
            ack: None,
        }));
    }
    if let Some(e) = error {
        out.push(Err(e));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn read(text: &'static [u8], max_records: usize) -> Vec<SourceBatch> {
        let origin = Origin {
            source: "file",
            stream: "in.jsonl".into(),
            shard_id: "file".into(),
        };
        let settings = BatchSettings {
            max_records,
            max_age: Duration::from_secs(60),
        };
        json_lines(
            tokio::io::BufReader::new(text),
            origin,
            settings,
            Shutdown::default(),
        )
        .map(|b| b.expect("batch"))
        .collect()
        .await
    }

    #[tokio::test]
    async fn lines_become_records_numbered_by_line_skipping_blanks() {
        let batches = read(b"{\"a\":1}\n\n  \r\n{\"a\":2}\r\nnot json\n{\"a\":3}", 2).await;
        let records: Vec<_> = batches.iter().flat_map(|b| b.records.iter()).collect();
        let seqs: Vec<_> = records
            .iter()
            .map(|r| r.meta.sequence_number.to_string())
            .collect();
        assert_eq!(seqs, ["1", "4", "5", "6"]);
        assert_eq!(&records[1].data[..], b"{\"a\":2}");
        assert_eq!(
            &records[2].data[..],
            b"not json",
            "malformed lines are records too"
        );
        assert_eq!(
            &records[3].data[..],
            b"{\"a\":3}",
            "a last line without newline counts"
        );
        assert_eq!(
            batches.iter().map(|b| b.records.len()).collect::<Vec<_>>(),
            [2, 2]
        );
        assert!(batches.iter().all(|b| b.shard_id == "file"));
        assert_eq!(records[0].meta.stream, "in.jsonl");
    }

    /// Gives its bytes, then waits forever: standard input with nothing more typed.
    struct ThenWaits(&'static [u8]);

    impl AsyncRead for ThenWaits {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0.is_empty() {
                return std::task::Poll::Pending;
            }
            let n = self.0.len().min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_stop_hands_out_the_records_read_so_far() {
        // Found by review: a stop cut the batches, so records read into the batch being filled
        // (up to `max_records`, or for `max_age`) were dropped.
        let origin = Origin {
            source: "stdin",
            stream: "stdin".into(),
            shard_id: "stdin".into(),
        };
        let settings = BatchSettings {
            max_records: 100,
            max_age: Duration::from_secs(3600),
        };
        let stop = Shutdown::default();
        let reader = BufReader::new(ThenWaits(b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"partial"));
        let mut batches = json_lines(reader, origin, settings, stop.clone());
        let later = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                stop.trigger();
            })
        };
        let mut read = Vec::new();
        while let Some(batch) = tokio::time::timeout(Duration::from_secs(5), batches.next())
            .await
            .expect("the stop ends the stream")
        {
            read.extend(batch.expect("batch").records);
        }
        later.await.unwrap();
        let lines: Vec<&[u8]> = read.iter().map(|r| &r.data[..]).collect();
        assert_eq!(lines, [&b"{\"a\":1}"[..], b"{\"a\":2}", b"{\"a\":3}"]);
    }
}
