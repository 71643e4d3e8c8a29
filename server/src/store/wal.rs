//! The redb store's write-ahead log (`tether.wal` beside `tether.redb`).
//!
//! A group commit costs one append and one `fdatasync` here; redb takes the
//! same changes in a non-durable commit (in memory, visible to readers) and
//! is made durable only now and then, by a checkpoint. A redb commit with
//! `Durability::Immediate` writes every B-tree page it copied (about 17
//! `pwrite`s for one write's record, key and audit rows) and flushes them:
//! at 1,000 writes/s that was a third of a core on the store thread alone.
//!
//! Each frame is `len: u32 LE, crc32: u32 LE, body`, the body a protobuf
//! [`Frame`] with a sequence number one above the previous frame's. A
//! checkpoint records in redb (durably) the last sequence it holds, then
//! empties the log. Recovery applies, in order, the frames above that
//! sequence and stops at the first torn, corrupt or out-of-sequence frame:
//! only a frame whose `fdatasync` never returned can be torn, and no caller
//! was told such a frame was durable.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use prost::Message;

/// What one commit changes, in the order it must be applied.
#[derive(Clone, PartialEq, Message)]
pub(super) struct Frame {
    /// One above the previous frame's.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The latest record of each vehicle saved in the commit.
    #[prost(message, repeated, tag = "2")]
    pub records: Vec<RecordRow>,
    /// Idempotency-key changes, in the order of the saves.
    #[prost(message, repeated, tag = "3")]
    pub keys: Vec<KeyRow>,
    /// Audit records, each with the sequence it was given.
    #[prost(message, repeated, tag = "4")]
    pub audits: Vec<AuditRow>,
    /// The next audit sequence after this commit.
    #[prost(uint64, tag = "5")]
    pub audit_next: u64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct RecordRow {
    #[prost(string, tag = "1")]
    pub vehicle: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub record: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct KeyRow {
    #[prost(string, tag = "1")]
    pub vehicle: String,
    #[prost(string, tag = "2")]
    pub key: String,
    /// The entry to write; none removes the key.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub entry: Option<Bytes>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct AuditRow {
    #[prost(string, tag = "1")]
    pub vehicle: String,
    /// Recorded at, µs since the epoch.
    #[prost(uint64, tag = "2")]
    pub at: u64,
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    #[prost(bytes = "bytes", tag = "4")]
    pub record: Bytes,
}

const HEADER: usize = 8;

/// The log file, appended to by the store's writer thread only.
pub(super) struct Wal {
    file: File,
    /// Bytes written since the last reset.
    len: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// Opens (or creates) the log and reads its intact frames, in order. The
    /// caller applies those above its checkpoint, checkpoints, then
    /// [`reset`](Self::reset)s the log.
    pub(super) fn open(path: &Path) -> io::Result<(Wal, Vec<Frame>)> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let frames = read_frames(&bytes);
        let len = bytes.len() as u64;
        Ok((Wal { file, len, buf: Vec::new() }, frames))
    }

    /// Appends one frame and waits until it is on disk.
    pub(super) fn append(&mut self, frame: &Frame) -> io::Result<()> {
        self.buf.clear();
        let body = frame.encoded_len();
        self.buf.reserve(HEADER + body);
        let len = u32::try_from(body).map_err(|_| io::Error::other("a commit over 4 GiB"))?;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        frame.encode(&mut self.buf).map_err(io::Error::other)?;
        let crc = crc32fast::hash(&self.buf[HEADER..]);
        self.buf[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&self.buf, self.len)?;
        self.file.sync_data()?;
        self.len += self.buf.len() as u64;
        // A rare large commit should not pin its buffer for ever.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Empties the log, once a checkpoint made everything in it durable.
    pub(super) fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    /// Bytes in the log.
    pub(super) fn len(&self) -> u64 {
        self.len
    }
}

/// The intact frames at the start of `bytes`, each one above the one before.
fn read_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    while bytes.len() >= HEADER {
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[4..HEADER].try_into().expect("4 bytes"));
        let Some(body) = bytes.get(HEADER..HEADER + len) else { break };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok(frame) = Frame::decode(body) else { break };
        if frames.last().is_some_and(|last| frame.seq != last.seq + 1) {
            break;
        }
        frames.push(frame);
        bytes = &bytes[HEADER + len..];
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, vehicle: &str) -> Frame {
        Frame {
            seq,
            records: vec![RecordRow { vehicle: vehicle.into(), record: Bytes::from_static(b"rec") }],
            keys: vec![KeyRow { vehicle: vehicle.into(), key: "k".into(), entry: None }],
            audits: vec![],
            audit_next: 1,
        }
    }

    #[test]
    fn frames_read_back_in_order_up_to_a_torn_or_corrupt_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        let (mut wal, frames) = Wal::open(&path).unwrap();
        assert!(frames.is_empty());
        for seq in 1..=3 {
            wal.append(&frame(seq, "car-1")).unwrap();
        }
        drop(wal);
        let (_, frames) = Wal::open(&path).unwrap();
        assert_eq!(frames, vec![frame(1, "car-1"), frame(2, "car-1"), frame(3, "car-1")]);

        // A torn tail: a frame cut short is not read, nor anything after it.
        let mut bytes = std::fs::read(&path).unwrap();
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&frame(4, "car-2")).unwrap();
        drop(wal);
        let torn = std::fs::read(&path).unwrap();
        std::fs::write(&path, &torn[..torn.len() - 3]).unwrap();
        assert_eq!(Wal::open(&path).unwrap().1.len(), 3);

        // A flipped byte in the second frame: only the first is read.
        let second = HEADER + frame(1, "car-1").encoded_len() + HEADER + 2;
        bytes[second] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Wal::open(&path).unwrap().1, vec![frame(1, "car-1")]);

        // A frame out of sequence ends the log.
        std::fs::write(&path, b"").unwrap();
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&frame(1, "car-1")).unwrap();
        wal.append(&frame(3, "car-1")).unwrap();
        drop(wal);
        assert_eq!(Wal::open(&path).unwrap().1.len(), 1);

        // Reset empties it; appends start again at the beginning.
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.reset().unwrap();
        assert_eq!(wal.len(), 0);
        wal.append(&frame(9, "car-9")).unwrap();
        drop(wal);
        assert_eq!(Wal::open(&path).unwrap().1, vec![frame(9, "car-9")]);
    }
}
