//! The classic consumer protocol's member assignment, as DescribeGroups returns it.
//!
//! librdkafka hands the assignment over as the raw bytes the group leader sent in
//! SyncGroup, in Kafka's `ConsumerProtocolAssignment` schema (versions 0–3 share
//! this layout; anything after the topics is ignored):
//!
//! ```text
//! version          i16
//! topics           i32 count, then per topic:
//!   name           i16 length + UTF-8 bytes
//!   partitions     i32 count + that many i32
//! user_data        i32 length (-1: null) + bytes — ignored
//! ```
//!
//! All integers are big-endian. KIP-848 (`group.protocol=consumer`) groups carry no
//! such bytes: the broker assigns partitions and reports them by another API.

use std::collections::BTreeMap;

/// Partitions by topic.
pub type Assignment = BTreeMap<String, Vec<i32>>;

/// Why bytes are not an assignment; shown to the user beside the member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// The bytes end inside a field.
    #[error("assignment ends early, at byte {0}")]
    Truncated(usize),
    /// A count or length is negative where the schema does not allow null.
    #[error("negative length {len} at byte {at}")]
    NegativeLength {
        /// The value read.
        len: i64,
        /// Where it was read.
        at: usize,
    },
    /// A topic name is not UTF-8.
    #[error("topic name at byte {0} is not UTF-8")]
    BadTopicName(usize),
}

/// Parses a member assignment. Empty bytes (a member that was assigned nothing,
/// or a group still rebalancing) are an empty assignment.
pub fn parse(bytes: &[u8]) -> Result<Assignment, AssignmentError> {
    let mut out = Assignment::new();
    if bytes.is_empty() {
        return Ok(out);
    }
    let mut r = Reader { bytes, at: 0 };
    let _version = r.i16()?;
    let topics = r.count()?;
    for _ in 0..topics {
        let len_at = r.at;
        let len = r.i16()?;
        if len < 0 {
            return Err(AssignmentError::NegativeLength {
                len: len.into(),
                at: len_at,
            });
        }
        let name_at = r.at;
        let name = std::str::from_utf8(r.take(len as usize)?)
            .map_err(|_| AssignmentError::BadTopicName(name_at))?
            .to_string();
        let n = r.count()?;
        // Never trust a count to size an allocation: it is bounded by the bytes left.
        let mut partitions = Vec::with_capacity(n.min(r.left() / 4));
        for _ in 0..n {
            partitions.push(r.i32()?);
        }
        // A topic may appear twice only in malformed data; merging is harmless.
        out.entry(name).or_default().extend(partitions);
    }
    for p in out.values_mut() {
        p.sort_unstable();
        p.dedup();
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], AssignmentError> {
        if self.left() < n {
            return Err(AssignmentError::Truncated(self.bytes.len()));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn i16(&mut self) -> Result<i16, AssignmentError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, AssignmentError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array count; the schema's arrays here are never null.
    fn count(&mut self) -> Result<usize, AssignmentError> {
        let at = self.at;
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| AssignmentError::NegativeLength { len: n.into(), at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds assignment bytes by hand, field by field, as the schema says.
    fn encode(version: i16, topics: &[(&str, &[i32])], user_data: Option<&[u8]>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(version.to_be_bytes());
        b.extend((topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        match user_data {
            Some(d) => {
                b.extend((d.len() as i32).to_be_bytes());
                b.extend(d);
            }
            None => b.extend((-1i32).to_be_bytes()),
        }
        b
    }

    #[test]
    fn parses_what_librdkafkas_cooperative_sticky_leader_wrote() {
        // A worker's assignment of sluice.tasks 0–3 with empty user data, as Tansu
        // stored it from the SyncGroup of a `sluice worker`.
        let bytes = [
            0, 0, 0, 0, 0, 1, 0, 12, 115, 108, 117, 105, 99, 101, 46, 116, 97, 115, 107, 115, 0, 0,
            0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0,
        ];
        let a = parse(&bytes).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a["sluice.tasks"], vec![0, 1, 2, 3]);
    }

    #[test]
    fn parses_a_literal_v0_assignment() {
        // Written out byte by byte so the test does not share the encoder's mistakes.
        let bytes = [
            0, 0, // version 0
            0, 0, 0, 1, // one topic
            0, 3, b'a', b'.', b'b', // "a.b"
            0, 0, 0, 2, // two partitions
            0, 0, 0, 7, // 7
            0, 0, 0, 3, // 3
        ];
        let a = parse(&bytes).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a["a.b"], vec![3, 7]);
    }

    #[test]
    fn parses_v1_to_v3_with_user_data_and_several_topics() {
        for version in 1..=3 {
            let bytes = encode(
                version,
                &[("tasks", &[0, 2, 1]), ("other", &[5])],
                Some(b"sticky-data"),
            );
            let a = parse(&bytes).unwrap();
            assert_eq!(a["tasks"], vec![0, 1, 2], "v{version}");
            assert_eq!(a["other"], vec![5], "v{version}");
        }
        let null_user_data = encode(0, &[("t", &[4])], None);
        assert_eq!(parse(&null_user_data).unwrap()["t"], vec![4]);
    }

    #[test]
    fn empty_bytes_and_empty_topic_lists_are_empty_assignments() {
        assert!(parse(&[]).unwrap().is_empty());
        assert!(parse(&encode(0, &[], None)).unwrap().is_empty());
        assert!(parse(&encode(0, &[("t", &[])], None)).unwrap()["t"].is_empty());
    }

    #[test]
    fn truncated_or_corrupt_bytes_are_errors_not_panics() {
        let good = encode(0, &[("tasks", &[0, 1])], None);
        // Every cut before the (ignored) 4-byte null user data lands inside a field.
        for cut in 1..good.len() - 4 {
            assert!(
                matches!(parse(&good[..cut]), Err(AssignmentError::Truncated(_))),
                "cut at {cut}: {:?}",
                parse(&good[..cut])
            );
        }
        // A huge partition count must not allocate or loop: it runs out of bytes.
        let mut huge = encode(0, &[("t", &[])], None);
        let n = huge.len();
        huge[n - 8..n - 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(parse(&huge), Err(AssignmentError::Truncated(_))));
        let negative = [0, 0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            parse(&negative),
            Err(AssignmentError::NegativeLength { len: -1, at: 2 })
        );
        let bad_utf8 = [0, 0, 0, 0, 0, 1, 0, 1, 0xff, 0, 0, 0, 0];
        assert_eq!(parse(&bad_utf8), Err(AssignmentError::BadTopicName(8)));
    }
}
