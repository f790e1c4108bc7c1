//! The chain check, over frames in storage order.
use super::{AuditRecord, Frame, hex};
use serde::{Deserialize, Serialize};

/// Where the chain breaks, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub records: u64,
    pub problems: Vec<String>,
    /// Things an operator should know that do not break the chain: the
    /// unfinished record a power cut left at the end, dropped at the next
    /// start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The last record's number and hash: kept by an operator (or a SIEM),
    /// `audit verify --anchor SEQ:HASH` later proves nothing up to it was
    /// rewritten since.
    #[serde(default)]
    pub head: Option<(u64, String)>,
}

impl Verification {
    /// Checks that record `seq` still has `hash` (an anchor kept from an
    /// earlier check); `record` is what the log holds at `seq`.
    pub fn check_anchor(&mut self, seq: u64, hash: &str, record: Option<&AuditRecord>) {
        match record {
            Some(r) if r.seq == seq && r.hash == hash => {}
            Some(r) if r.seq == seq => self.problems.push(format!(
                "record {seq}: its hash is not the anchor's (the log was rewritten up to it)"
            )),
            _ => self.problems.push(format!(
                "record {seq} of the anchor is not in the log (removed, or another log)"
            )),
        }
    }
}

/// What the chain is checked against besides itself.
pub struct Expect {
    /// The first record's number and its predecessor's hash: 1 and
    /// GENESIS, or the anchor retention kept for dropped segments.
    pub first: (u64, [u8; 32]),
    /// The last record the session index saw: the log may not end before
    /// it (a cut-off tail).
    pub indexed: u64,
    /// The store holds sessions, so it has been used and an empty log
    /// means a removed one.
    pub in_use: bool,
}

/// Checks a chain given in storage order.
pub fn verify(frames: impl Iterator<Item = Frame>, expect: &Expect) -> Verification {
    let mut problems = Vec::new();
    let (mut expected_seq, mut prev) = expect.first;
    let mut n = 0;
    for f in frames {
        n += 1;
        let seq = match f.record() {
            Ok(r) => r.seq,
            Err(e) => {
                problems.push(format!(
                    "record after {}: unreadable ({e})",
                    expected_seq - 1
                ));
                expected_seq += 1;
                prev = f.hash;
                continue;
            }
        };
        if seq != expected_seq {
            problems.push(if seq > expected_seq {
                format!(
                    "record {seq}: records {}..{} are missing (removed)",
                    expected_seq,
                    seq - 1
                )
            } else {
                format!(
                    "record {seq}: out of order after record {} (reordered or duplicated)",
                    expected_seq - 1
                )
            });
        }
        if f.prev != prev {
            problems.push(format!(
                "record {seq}: does not follow the record before it (removed or reordered)"
            ));
        }
        if !f.intact() {
            problems.push(format!(
                "record {seq}: content does not match its hash (changed)"
            ));
        }
        expected_seq = seq + 1;
        prev = f.hash;
        if problems.len() > 100 {
            problems.push("more problems not listed".into());
            break;
        }
    }
    let last = expected_seq - 1;
    if last < expect.indexed {
        problems.push(format!(
            "the log ends at record {last} but the session index has seen record {}: records were cut off the end",
            expect.indexed
        ));
    } else if n == 0 && expect.in_use && expect.first.0 == 1 {
        problems
            .push("the store has sessions but its audit log is empty: the log was removed".into());
    }
    Verification {
        records: n,
        problems,
        notes: Vec::new(),
        head: (last > 0).then(|| (last, hex(&prev))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::GENESIS;
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Vec<Frame> {
        let mut out: Vec<Frame> = Vec::new();
        for i in 1..=n {
            let prev = out.last().map_or(GENESIS, |f| f.hash);
            let data = json!({"path": format!("/x/{i}"), "decision": "allow"});
            out.push(Frame::new(i, 1000 + i, "request", &data, prev).unwrap());
        }
        out
    }

    fn expect(indexed: u64) -> Expect {
        Expect {
            first: (1, GENESIS),
            indexed,
            in_use: true,
        }
    }

    fn changed(f: &Frame, decision: &str) -> Frame {
        let mut r = f.record().unwrap();
        r.data["decision"] = json!(decision);
        let body = Frame::new(r.seq, r.ts_ms, &r.kind, &r.data, f.prev)
            .unwrap()
            .body;
        Frame { body, ..f.clone() }
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(5);
        let v = verify(c.clone().into_iter(), &expect(5));
        assert_eq!((v.records, v.problems.len()), (5, 0), "{v:?}");
        assert_eq!(v.head, Some((5, hex(&c[4].hash))));
    }

    /// A store that was used (it has sessions) with its whole log removed
    /// is not "intact: 0 records"; a new store is.
    #[test]
    fn a_removed_log_is_not_an_empty_one() {
        let v = verify(std::iter::empty(), &expect(0));
        assert!(v.problems[0].contains("log was removed"), "{v:?}");
        let new = Expect {
            in_use: false,
            ..expect(0)
        };
        assert!(verify(std::iter::empty(), &new).problems.is_empty());
    }

    /// An anchor kept from an earlier check: the log rewritten up to it
    /// from scratch (a new chain, consistent in itself) fails against it.
    #[test]
    fn an_anchor_catches_a_rewritten_log() {
        let c = chain(5);
        let v = verify(c.clone().into_iter(), &expect(5));
        let (seq, hash) = v.head.clone().unwrap();
        let last = |c: &[Frame]| c.last().map(|f| f.record().unwrap());
        let mut ok = v.clone();
        ok.check_anchor(seq, &hash, last(&c).as_ref());
        assert!(ok.problems.is_empty());
        // The same records with one changed, re-hashed from there on.
        let mut forged = chain(5);
        forged[1] = changed(&forged[1], "deny");
        let mut prev = forged[0].hash;
        for f in forged.iter_mut().skip(1) {
            f.prev = prev;
            f.hash = super::super::digest(&f.prev, &f.body);
            prev = f.hash;
        }
        let mut v = verify(forged.clone().into_iter(), &expect(5));
        assert!(v.problems.is_empty(), "consistent in itself");
        v.check_anchor(seq, &hash, last(&forged).as_ref());
        assert!(v.problems[0].contains("not the anchor's"), "{v:?}");
        let mut v = verify(c[..3].iter().cloned(), &expect(3));
        v.check_anchor(seq, &hash, None);
        assert!(v.problems[0].contains("not in the log"), "{v:?}");
    }

    #[test]
    fn changes_removals_reorders_and_cut_tails_are_found_where_they_are() {
        let c = chain(6);
        let mut bad = c.clone();
        bad[2] = changed(&bad[2], "deny");
        let v = verify(bad.into_iter(), &expect(6));
        assert_eq!(
            v.problems,
            vec!["record 3: content does not match its hash (changed)"]
        );

        let mut removed = c.clone();
        removed.remove(3);
        let v = verify(removed.into_iter(), &expect(6));
        assert!(
            v.problems[0].starts_with("record 5: records 4..4 are missing"),
            "{v:?}"
        );

        let mut swapped = c.clone();
        swapped.swap(1, 2);
        let v = verify(swapped.into_iter(), &expect(6));
        assert!(
            v.problems
                .iter()
                .any(|p| p.starts_with("record 3: does not follow")),
            "{v:?}"
        );

        let v = verify(c[..4].iter().cloned(), &expect(6));
        assert!(v.problems[0].contains("cut off the end"), "{v:?}");
    }
}
