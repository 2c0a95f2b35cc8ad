//! The snapshot of a restore command, packed once when it is large.
//!
//! A restore is the one command whose size follows the catalog's: at 10,000 nodes and
//! 170,000 instances its snapshot is 80 MiB of JSON, more than a Raft frame or a log
//! entry may hold. It deflates well (names, IDs and field names repeat: that catalog's
//! JSON to a twentieth, a fifteenth once in base64), so a snapshot of [`PACK_FROM`] bytes
//! or more is written as one string, the base64 of its JSON deflated, and a smaller one as
//! the object it always was. Reading takes either, so entries written before packing
//! existed still read, and unpacking stops at [`MAX_UNPACKED`] bytes, whatever the packed
//! string claims.
//!
//! A command is written several times (counted for its batch, into the log, to every
//! follower), so the packed form is made once and kept with the snapshot, shared by
//! clones; whoever builds a restore calls [`PackedSnapshot::pack`] on a blocking thread
//! first, so that no runtime thread spends the time deflating. A packed snapshot read
//! from a peer or the log stays packed until it is applied: a follower takes the Raft
//! message in, writes it to its log and answers without inflating and parsing it (for
//! 80 MiB of JSON, about a second, far over a Raft message's deadline).

use std::fmt;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Snapshot;

/// Snapshots whose JSON is at least this long are packed.
pub(crate) const PACK_FROM: usize = 1024 * 1024;
/// The most an unpacked snapshot may hold (the bound of a Raft snapshot, too).
pub(crate) const MAX_UNPACKED: u64 = 1 << 30;

/// What a snapshot is written as, once decided: `None` when it travels as an object.
type Form = Result<Option<Arc<str>>, String>;

/// The snapshot a restore replaces the catalog with: given whole, or packed as it was
/// read; each form is made from the other when first needed, once.
#[derive(Clone)]
pub struct PackedSnapshot(Arc<Forms>);

struct Forms {
    snapshot: OnceLock<Result<Snapshot, String>>,
    packed: OnceLock<Form>,
}

impl PackedSnapshot {
    /// A snapshot to restore; it is packed when first written, or by [`Self::pack`].
    pub fn new(snapshot: Snapshot) -> PackedSnapshot {
        let forms = Forms {
            snapshot: OnceLock::from(Ok(snapshot)),
            packed: OnceLock::new(),
        };
        PackedSnapshot(Arc::new(forms))
    }

    fn from_packed(packed: &str) -> PackedSnapshot {
        let forms = Forms {
            snapshot: OnceLock::new(),
            packed: OnceLock::from(Ok(Some(Arc::from(packed)))),
        };
        PackedSnapshot(Arc::new(forms))
    }

    /// The snapshot, unpacked if it came packed: slow for a large catalog.
    pub fn snapshot(&self) -> Result<&Snapshot, String> {
        let unpacked = self.0.snapshot.get_or_init(|| match self.0.packed.get() {
            Some(Ok(Some(packed))) => unpack(packed),
            _ => Err("a restore with neither a snapshot nor its packed form".into()),
        });
        unpacked.as_ref().map_err(Clone::clone)
    }

    /// Decides how it is written, deflating it if it is large: slow for a large catalog,
    /// so for a blocking thread. Writing it later reuses the result.
    pub fn pack(&self) -> Result<(), String> {
        self.packed().map(|_| ())
    }

    fn packed(&self) -> Result<Option<&Arc<str>>, String> {
        let form = self.0.packed.get_or_init(|| self.snapshot().and_then(pack));
        match form {
            Ok(form) => Ok(form.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }
}

fn pack(snapshot: &Snapshot) -> Form {
    let json = serde_json::to_vec(snapshot).map_err(|e| e.to_string())?;
    if json.len() < PACK_FROM {
        return Ok(None);
    }
    let mut deflate = DeflateEncoder::new(Vec::with_capacity(json.len() / 8), Compression::fast());
    deflate.write_all(&json).map_err(|e| e.to_string())?;
    let deflated = deflate.finish().map_err(|e| e.to_string())?;
    Ok(Some(STANDARD.encode(deflated).into()))
}

fn unpack(packed: &str) -> Result<Snapshot, String> {
    let deflated = STANDARD
        .decode(packed)
        .map_err(|e| format!("packed snapshot: not base64: {e}"))?;
    let mut json = Vec::new();
    DeflateDecoder::new(deflated.as_slice())
        .take(MAX_UNPACKED + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("packed snapshot: not deflated: {e}"))?;
    if json.len() as u64 > MAX_UNPACKED {
        return Err(format!(
            "packed snapshot: over {MAX_UNPACKED} bytes unpacked"
        ));
    }
    serde_json::from_slice(&json).map_err(|e| format!("packed snapshot: {e}"))
}

impl PartialEq for PackedSnapshot {
    fn eq(&self, other: &Self) -> bool {
        match (self.snapshot(), other.snapshot()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.packed() == other.packed(),
        }
    }
}

impl Eq for PackedSnapshot {}

impl fmt::Debug for PackedSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.snapshot.get(), self.0.packed.get()) {
            (Some(snapshot), _) => f.debug_tuple("PackedSnapshot").field(snapshot).finish(),
            (None, Some(Ok(Some(packed)))) => {
                write!(f, "PackedSnapshot({} bytes packed)", packed.len())
            }
            _ => f.write_str("PackedSnapshot(?)"),
        }
    }
}

impl Serialize for PackedSnapshot {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self.packed().map_err(serde::ser::Error::custom)? {
            Some(packed) => ser.serialize_str(packed),
            None => self
                .snapshot()
                .map_err(serde::ser::Error::custom)?
                .serialize(ser),
        }
    }
}

impl<'de> Deserialize<'de> for PackedSnapshot {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(SnapshotVisitor)
    }
}

struct SnapshotVisitor;

impl<'de> Visitor<'de> for SnapshotVisitor {
    type Value = PackedSnapshot;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a snapshot, as an object or packed in a string")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Snapshot::deserialize(de::value::MapAccessDeserializer::new(map)).map(PackedSnapshot::new)
    }

    fn visit_str<E: de::Error>(self, packed: &str) -> Result<Self::Value, E> {
        Ok(PackedSnapshot::from_packed(packed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, KvWrite, State};

    /// A catalog whose snapshot is about `keys` KiB of JSON.
    fn snapshot_of(keys: usize) -> Snapshot {
        let mut state = State::default();
        for i in 0..keys {
            let write = KvWrite::Set {
                key: format!("big/{i:06}"),
                value: vec![b'x'; 700],
                flags: i as u64,
                cas: None,
            };
            state
                .apply(i as u64 + 1, &Command::Kv(write))
                .expect("a set applies");
        }
        state.to_snapshot()
    }

    fn round_trip(snapshot: &Snapshot) -> (String, PackedSnapshot) {
        let command = Command::Restore(PackedSnapshot::new(snapshot.clone()));
        let json = serde_json::to_string(&command).expect("serialises");
        match serde_json::from_str(&json).expect("deserialises") {
            Command::Restore(back) => (json, back),
            other => panic!("not a restore: {other:?}"),
        }
    }

    #[test]
    fn small_snapshots_stay_objects_and_large_ones_are_packed() {
        let small = snapshot_of(10);
        let (json, back) = round_trip(&small);
        assert!(json.starts_with(r#"{"Restore":{"#), "{}", &json[..40]);
        assert_eq!(back.snapshot(), Ok(&small));

        let large = snapshot_of(2_000);
        let plain = serde_json::to_vec(&large).expect("serialises").len();
        assert!(plain >= PACK_FROM, "{plain}");
        let (json, back) = round_trip(&large);
        assert!(json.starts_with(r#"{"Restore":""#), "{}", &json[..40]);
        assert!(json.len() < plain / 4, "{} of {plain}", json.len());
        assert!(back.0.snapshot.get().is_none(), "read, it stays packed");
        assert_eq!(back.snapshot(), Ok(&large));
        // Written again, what was read is the string it came as.
        let again = serde_json::to_string(&Command::Restore(back)).expect("serialises");
        assert_eq!(again, json);
    }

    #[test]
    fn a_snapshot_is_packed_once_and_its_clones_share_the_result() {
        let packed = PackedSnapshot::new(snapshot_of(2_000));
        let clone = packed.clone();
        packed.pack().expect("packs");
        let form = clone
            .0
            .packed
            .get()
            .expect("the clone sees the packed form");
        let written = serde_json::to_string(&clone).expect("serialises");
        match form {
            Ok(Some(s)) => assert_eq!(written, format!("\"{s}\"")),
            other => panic!("not packed: {other:?}"),
        }
    }

    #[test]
    fn an_entry_written_before_packing_still_reads() {
        let large = snapshot_of(2_000);
        let old = format!(
            r#"{{"Restore":{}}}"#,
            serde_json::to_string(&large).expect("serialises")
        );
        match serde_json::from_str(&old).expect("deserialises") {
            Command::Restore(back) => assert_eq!(back.snapshot(), Ok(&large)),
            other => panic!("not a restore: {other:?}"),
        }
    }

    #[test]
    fn bad_packed_strings_read_but_do_not_unpack_and_are_refused_when_applied() {
        let mut deflate = DeflateEncoder::new(Vec::new(), Compression::fast());
        deflate.write_all(b"[1, 2]").expect("writes");
        let not_a_snapshot = STANDARD.encode(deflate.finish().expect("finishes"));
        for bad in ["not base64!", "AAAA", &not_a_snapshot] {
            let json = format!(r#"{{"Restore":"{bad}"}}"#);
            let command: Command = serde_json::from_str(&json).expect("reads");
            let Command::Restore(packed) = &command else {
                panic!("not a restore")
            };
            let err = packed.snapshot().expect_err(bad);
            assert!(err.contains("packed snapshot"), "{err}");
            let mut state = State::default();
            let refused = state.apply(1, &command).expect_err(bad);
            assert_eq!(refused, crate::ApplyError::Snapshot(err));
        }
    }
}
