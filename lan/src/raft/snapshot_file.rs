//! The snapshot file (`<data_dir>/raft/snapshot.json`): the latest Raft snapshot of a
//! server with a data dir, read at start before openraft re-applies the log after it.
//!
//! ```text
//!   proconsul-snapshot-v2 <hex SHA-256 of everything after this line>\n
//!   <the snapshot's Raft metadata, one line of JSON>\n
//!   <the snapshot's data, as it was built or received: the catalog's JSON>
//! ```
//!
//! The data is written as it is, so a file costs what its catalog's JSON costs to write
//! and read, and the data can be sent to a follower without decoding the catalog. One
//! changed byte anywhere is found when the file is read at start. Files written before
//! this layout are still read: a JSON object `{"meta": …, "data": [bytes as numbers]}`,
//! with or without a first line holding the hex SHA-256 of that object.

use std::io::Write;
use std::path::Path;

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use super::NodeId;
use catalog::ServerNode;

/// The Raft metadata of a snapshot.
pub(crate) type Meta = SnapshotMeta<NodeId, ServerNode>;

/// What the first line of a file of this layout starts with.
const HEADER: &[u8] = b"proconsul-snapshot-v2 ";

/// A snapshot as files before [`HEADER`] held it.
#[derive(Debug, Serialize, Deserialize)]
struct Legacy {
    meta: Meta,
    data: Vec<u8>,
}

/// Hex SHA-256 of `parts`, one after the other.
fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a snapshot to `path` so that a crash leaves either the old file or the new one:
/// a temporary file, fsynced, renamed over the old one, then the directory fsynced.
pub(crate) fn write(path: &Path, meta: &Meta, data: &[u8]) -> std::io::Result<()> {
    let mut meta_line = serde_json::to_vec(meta)?;
    meta_line.push(b'\n');
    let sum = sha256_hex(&[&meta_line, data]);
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        file.write_all(HEADER)?;
        file.write_all(sum.as_bytes())?;
        file.write_all(b"\n")?;
        file.write_all(&meta_line)?;
        file.write_all(data)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The metadata and data of a file's contents. With `verify`, its checksum must match
/// (files from before checksums have none to match). The reason when it cannot be read.
pub(crate) fn read(mut bytes: Vec<u8>, verify: bool) -> Result<(Meta, Vec<u8>), String> {
    if let Some(rest) = bytes.strip_prefix(HEADER) {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("no end to the first line")?;
        let (sum, body) = (&rest[..end], &rest[end + 1..]);
        let meta_end = body
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("no metadata line")?;
        if verify && sum != sha256_hex(&[body]).as_bytes() {
            return Err("its checksum does not match its contents".into());
        }
        let meta: Meta = serde_json::from_slice(&body[..meta_end]).map_err(|e| e.to_string())?;
        // The data is the end of the file: keep it in place rather than copy it.
        let data_at = HEADER.len() + end + 1 + meta_end + 1;
        bytes.drain(..data_at);
        return Ok((meta, bytes));
    }
    let json = legacy_json(&bytes, verify)?;
    let legacy: Legacy = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Ok((legacy.meta, legacy.data))
}

/// The JSON of a file of the older layout, once its checksum (if it has one) is verified.
fn legacy_json(bytes: &[u8], verify: bool) -> Result<&[u8], String> {
    if bytes.first() == Some(&b'{') {
        return Ok(bytes);
    }
    let at = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no checksum line")?;
    let (sum, json) = (&bytes[..at], &bytes[at + 1..]);
    if verify && sum != sha256_hex(&[json]).as_bytes() {
        return Err("its checksum does not match its contents".into());
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            snapshot_id: "1-2-3".into(),
            ..Meta::default()
        }
    }

    #[test]
    fn a_file_reads_back_and_one_changed_byte_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let data = br#"{"catalog":{"nodes":[]}}"#.to_vec();
        write(&path, &meta(), &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (m, d) = read(bytes.clone(), true).unwrap();
        assert_eq!((m, d), (meta(), data.clone()));
        for at in [HEADER.len() + 3, bytes.len() / 2, bytes.len() - 2] {
            let mut changed = bytes.clone();
            changed[at] ^= 0x01;
            assert!(read(changed, true).is_err(), "a change at {at} is found");
        }
    }

    #[test]
    fn files_of_the_older_layout_are_read() {
        let data = b"{}".to_vec();
        let json = serde_json::to_vec(&Legacy {
            meta: meta(),
            data: data.clone(),
        })
        .unwrap();
        assert_eq!(
            read(json.clone(), true).unwrap().1,
            data,
            "no checksum line"
        );
        let mut with_sum = sha256_hex(&[&json]).into_bytes();
        with_sum.push(b'\n');
        with_sum.extend_from_slice(&json);
        assert_eq!(read(with_sum.clone(), true).unwrap().1, data);
        let last = with_sum.len() - 3;
        with_sum[last] ^= 0x01;
        assert!(read(with_sum, true).is_err());
    }
}
