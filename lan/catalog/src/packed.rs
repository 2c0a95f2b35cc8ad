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
//!
//! Packed, that catalog is still about 5 MiB: more than a follower can take in, write and
//! fsync within the heartbeat interval openraft gives an AppendEntries, which it then
//! sends again and again. A restore whose packed form is longer than
//! [`RESTORE_PART_BYTES`] is therefore written as [`RestorePart`]s, each an entry of its
//! own: the catalog stages them (in its snapshots too, so that a follower that installs
//! one mid-way still has them) and replaces itself when the last arrives.

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
/// Most bytes of packed text in one part of a restore.
pub const RESTORE_PART_BYTES: usize = 512 * 1024;
/// Most bytes of packed text a staged restore may hold (its parts together).
pub const MAX_STAGED_BYTES: usize = 512 * 1024 * 1024;
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

    pub(crate) fn from_packed(packed: &str) -> PackedSnapshot {
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

impl PackedSnapshot {
    /// The commands that restore this snapshot, in order: the restore itself when its
    /// written form is short, else its packed text in parts of at most
    /// [`RESTORE_PART_BYTES`], tagged `restore` (an ID the caller picks, so that the parts
    /// of two restores never mix). Packs it first if it is not yet: slow for a large
    /// catalog, so for a blocking thread.
    pub fn into_commands(self, restore: u64) -> Result<Vec<crate::Command>, String> {
        let packed = match self.packed()? {
            Some(packed) if packed.len() > RESTORE_PART_BYTES => packed.clone(),
            _ => return Ok(vec![crate::Command::Restore(self)]),
        };
        // The packed text is base64, one byte per character: any cut is a boundary.
        let pieces: Vec<&str> = packed
            .as_bytes()
            .chunks(RESTORE_PART_BYTES)
            .map(|c| std::str::from_utf8(c).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let parts = u32::try_from(pieces.len()).map_err(|e| e.to_string())?;
        Ok(pieces
            .into_iter()
            .zip(0..)
            .map(|(data, part)| {
                crate::Command::RestorePart(RestorePart {
                    restore,
                    part,
                    parts,
                    data: data.to_string(),
                })
            })
            .collect())
    }
}

/// One part of a restore too large for one log entry: a slice of the packed snapshot's
/// text. Parts `0..parts` of one `restore` arrive in order; the last replaces the
/// catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePart {
    /// Which restore the part belongs to.
    pub restore: u64,
    /// Its position, from 0.
    pub part: u32,
    /// How many parts the restore has.
    pub parts: u32,
    /// Its slice of the packed text.
    pub data: String,
}

/// The parts of a restore received so far, kept by the catalog until the last arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRestore {
    restore: u64,
    parts: u32,
    received: u32,
    data: String,
}

impl StagedRestore {
    /// Whether `part` is the next part of this restore.
    fn followed_by(&self, part: &RestorePart) -> bool {
        self.restore == part.restore && self.parts == part.parts && self.received == part.part
    }

    /// Whether `part` is the last one of this restore and the next to arrive.
    pub(crate) fn completed_by(&self, part: &RestorePart) -> bool {
        self.followed_by(part)
            && part.part.saturating_add(1) == part.parts
            && self.data.len().saturating_add(part.data.len()) <= MAX_STAGED_BYTES
    }

    /// The packed text received so far.
    pub(crate) fn text(&self) -> &str {
        &self.data
    }

    /// Bytes of packed text received so far.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// Takes `part` in after those staged in `staged` (part 0 starts over, dropping any
    /// other restore's); returns the snapshot once the last part is in. A part that does
    /// not follow is refused and changes nothing; every server refuses it alike.
    pub(crate) fn take(
        staged: &mut Option<StagedRestore>,
        part: &RestorePart,
    ) -> Result<Option<PackedSnapshot>, String> {
        let id = part.restore;
        if part.part >= part.parts {
            return Err(format!(
                "restore {id:x}: part {} of {} does not exist",
                part.part, part.parts
            ));
        }
        let before = match staged.as_ref() {
            _ if part.part == 0 => 0,
            Some(s) if s.followed_by(part) => s.data.len(),
            _ => {
                return Err(format!(
                    "restore {id:x}: part {} of {} arrived without the parts before it; \
                     start the restore again",
                    part.part, part.parts
                ));
            }
        };
        if before.saturating_add(part.data.len()) > MAX_STAGED_BYTES {
            return Err(format!(
                "restore {id:x}: over {MAX_STAGED_BYTES} bytes packed"
            ));
        }
        if part.part == 0 {
            *staged = None;
        }
        let current = staged.get_or_insert_with(|| StagedRestore {
            restore: id,
            parts: part.parts,
            received: 0,
            data: String::new(),
        });
        current.data.push_str(&part.data);
        current.received += 1;
        if current.received < current.parts {
            return Ok(None);
        }
        let done = staged.take().map(|s| s.data).unwrap_or_default();
        Ok(Some(PackedSnapshot::from_packed(&done)))
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

    /// A catalog of `keys` keys of 700 bytes that do not deflate (a fixed pseudo-random
    /// sequence from `seed`), so that it packs into several restore parts.
    fn noisy_snapshot(keys: usize, seed: u64) -> Snapshot {
        let mut x = seed | 1;
        let mut state = State::default();
        for i in 0..keys {
            let value = (0..700)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let write = KvWrite::Set {
                key: format!("noise/{i:06}"),
                value,
                flags: 0,
                cas: None,
            };
            state
                .apply(i as u64 + 1, &Command::Kv(write))
                .expect("a set applies");
        }
        state.to_snapshot()
    }

    /// A catalog with one key in it, and its snapshot.
    fn seeded() -> (State, Snapshot) {
        let mut state = State::default();
        let write = KvWrite::Set {
            key: "before".into(),
            value: b"restore".to_vec(),
            flags: 0,
            cas: None,
        };
        state.apply(1, &Command::Kv(write)).expect("a set applies");
        let snapshot = state.to_snapshot();
        (state, snapshot)
    }

    fn parts_of(snapshot: &Snapshot, restore: u64) -> Vec<Command> {
        PackedSnapshot::new(snapshot.clone())
            .into_commands(restore)
            .expect("packs")
    }

    /// The catalog's snapshot without the parts it stages.
    fn without_staging(state: &State) -> (Snapshot, Option<StagedRestore>) {
        let mut snapshot = state.to_snapshot();
        let staged = snapshot.restoring.take();
        (snapshot, staged)
    }

    #[test]
    fn a_large_restore_goes_in_parts_that_replace_the_catalog_only_with_the_last() {
        let small = snapshot_of(10);
        assert!(matches!(
            parts_of(&small, 7).as_slice(),
            [Command::Restore(_)]
        ));

        let large = noisy_snapshot(2_000, 11);
        let parts = parts_of(&large, 7);
        let n = parts.len();
        assert!(n >= 3, "{n} parts");
        for (i, command) in parts.iter().enumerate() {
            let Command::RestorePart(part) = command else {
                panic!("not a part: {command:?}")
            };
            assert_eq!(
                (part.restore, part.part, part.parts),
                (7, i as u32, n as u32)
            );
            assert!(part.data.len() <= RESTORE_PART_BYTES);
        }

        // Restored whole at index 100, and in parts ending at index 100.
        let (mut whole, before) = seeded();
        whole
            .apply(100, &Command::Restore(PackedSnapshot::new(large.clone())))
            .expect("restores");
        let (mut parted, _) = seeded();
        for (i, command) in parts.iter().enumerate() {
            let index = 100 - (n - 1 - i) as u64;
            parted.apply(index, command).expect("a part applies");
            let (visible, staged) = without_staging(&parted);
            if i + 1 < n {
                assert_eq!(visible, before, "part {i} changed the catalog");
                assert!(staged.is_some());
            } else {
                assert_eq!(staged, None);
            }
        }
        assert_eq!(parted.to_snapshot(), whole.to_snapshot());
    }

    #[test]
    fn parts_that_do_not_follow_are_refused_and_change_nothing() {
        let (a, b) = (noisy_snapshot(2_000, 3), noisy_snapshot(1_500, 5));
        let (parts_a, parts_b) = (parts_of(&a, 1), parts_of(&b, 2));
        let (mut state, _) = seeded();
        let mut index = 10;
        let mut refused = |state: &mut State, command: &Command| {
            let before = state.to_snapshot();
            index += 1;
            let err = state.apply(index, command).expect_err("refused");
            assert!(matches!(err, crate::ApplyError::Snapshot(_)), "{err:?}");
            assert_eq!(state.to_snapshot(), before, "{err}");
        };
        // A later part first, and a part that cannot exist.
        refused(&mut state, &parts_a[1]);
        let Command::RestorePart(first) = &parts_a[0] else {
            panic!("not a part")
        };
        let beyond = RestorePart {
            part: first.parts,
            ..first.clone()
        };
        refused(&mut state, &Command::RestorePart(beyond));
        // Two parts of a, then a part of b out of turn, then a's second part again.
        state.apply(20, &parts_a[0]).expect("applies");
        state.apply(21, &parts_a[1]).expect("applies");
        refused(&mut state, &parts_b[1]);
        refused(&mut state, &parts_a[1]);
        // b's first part starts over: b's parts restore b.
        for (i, command) in parts_b.iter().enumerate() {
            state.apply(30 + i as u64, command).expect("applies");
        }
        let mut restored_b = State::default();
        restored_b
            .apply(
                29 + parts_b.len() as u64,
                &Command::Restore(PackedSnapshot::new(b)),
            )
            .expect("restores");
        assert_eq!(state.to_snapshot(), restored_b.to_snapshot());
        // a's remaining parts, without its start, are refused.
        refused(&mut state, &parts_a[2]);
    }

    #[test]
    fn a_snapshot_taken_between_parts_carries_them_to_the_server_that_installs_it() {
        let large = noisy_snapshot(2_000, 17);
        let parts = parts_of(&large, 4);
        let (mut leader, _) = seeded();
        let half = parts.len() / 2;
        for (i, command) in parts[..half].iter().enumerate() {
            leader.apply(10 + i as u64, command).expect("applies");
        }
        let file = serde_json::to_vec(&leader.to_snapshot()).expect("serialises");
        let mut follower =
            State::from_snapshot(serde_json::from_slice(&file).expect("deserialises"));
        for (i, command) in parts.iter().enumerate().skip(half) {
            leader.apply(10 + i as u64, command).expect("applies");
            follower.apply(10 + i as u64, command).expect("applies");
        }
        assert_eq!(follower.to_snapshot(), leader.to_snapshot());
        assert_eq!(without_staging(&follower).1, None);
    }

    #[test]
    fn the_writer_builds_a_replacement_off_the_lock_with_the_same_result() {
        let (a, b) = (noisy_snapshot(2_000, 23), noisy_snapshot(1_500, 29));
        let (parts_a, parts_b) = (parts_of(&a, 1), parts_of(&b, 2));
        let n = parts_a.len();
        let (catalog, writer) = crate::Catalog::new();
        let (mut state, _) = seeded();
        writer.replace(state.to_snapshot());
        let mut both = |index: u64, commands: &[Command]| {
            let by_writer = writer.apply_all(index, commands);
            let by_state: Vec<_> = commands.iter().map(|c| state.apply(index, c)).collect();
            assert_eq!(by_writer, by_state);
            assert_eq!(catalog.read(|s| s.to_snapshot()), state.to_snapshot());
        };
        // A whole restore, then a's parts, the last in one entry with other writes.
        both(5, &[Command::Restore(PackedSnapshot::new(b.clone()))]);
        for (i, part) in parts_a[..n - 1].iter().enumerate() {
            both(10 + i as u64, std::slice::from_ref(part));
        }
        let set = Command::Kv(KvWrite::Set {
            key: "after".into(),
            value: b"x".to_vec(),
            flags: 0,
            cas: None,
        });
        both(20, &[set.clone(), parts_a[n - 1].clone(), set.clone()]);
        assert!(catalog.read(|s| s.restoring.is_none()));
        // An entry in which b's parts start over before a's last part: a's last part is
        // refused, as applied one by one.
        for (i, part) in parts_a[..n - 1].iter().enumerate() {
            both(30 + i as u64, std::slice::from_ref(part));
        }
        both(40, &[parts_b[0].clone(), parts_a[n - 1].clone()]);
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
