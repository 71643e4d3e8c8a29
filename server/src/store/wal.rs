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
//! empties the log and writes a marker frame saying so. Reading a log
//! ([`scan`]) finds every intact frame and the first damaged stretch; the
//! store's recovery (`redb/open.rs`) replays the frames above the checkpoint
//! and decides whether damage lost anything acknowledged: only a last frame
//! whose `fdatasync` never returned may be torn, and no caller was told such
//! a frame was durable.

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
    /// A checkpoint marker, the first frame of an emptied log: it changes
    /// nothing, and says that a checkpoint made every commit up to `seq`
    /// durable in the database (so a database found holding less went back
    /// in time).
    #[prost(bool, tag = "6")]
    pub checkpoint: bool,
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
    /// Opens (or creates) the log and reads what it holds. The caller
    /// decides from the [`Scan`] what to replay, replays, checkpoints, then
    /// [`reset`](Self::reset)s the log.
    pub(super) fn open(path: &Path) -> io::Result<(Wal, Scan)> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let scan = scan(&bytes);
        let len = bytes.len() as u64;
        Ok((Wal { file, len, buf: Vec::new() }, scan))
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
        // A failed append leaves the log as it was: whatever part of the
        // frame reached the file is cut off again (best effort: a frame cut
        // short is a torn tail, which replay drops), and the next append
        // writes at the same place.
        let written = self.file.write_all_at(&self.buf, self.len).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.buf.len() as u64;
        // A rare large commit should not pin its buffer for ever.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Empties the log, once a checkpoint made everything in it up to
    /// `checkpointed` durable, and writes that as its marker frame.
    pub(super) fn reset(&mut self, checkpointed: u64) -> io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        if checkpointed > 0 {
            self.append(&Frame { seq: checkpointed, checkpoint: true, ..Frame::default() })?;
        }
        Ok(())
    }

    /// Bytes in the log.
    pub(super) fn len(&self) -> u64 {
        self.len
    }
}

/// What a log file holds: every intact frame, in file order, and the first
/// damaged stretch, if any. A frame is intact when its length fits, its
/// crc32 matches and its body decodes; after a damaged stretch the scan
/// looks for the next intact frame, so that what lies beyond damage is
/// known (a torn last frame has nothing intact after it; a damaged frame in
/// the middle does).
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Intact frames with their byte offsets, in file order.
    pub frames: Vec<(u64, Frame)>,
    /// The first damaged stretch.
    pub damage: Option<Damage>,
    /// The file's length.
    pub len: u64,
}

/// A stretch of the log that holds no intact frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    /// Where it starts.
    pub offset: u64,
    /// Where the next intact frame starts (the file's end if none does).
    pub until: u64,
    /// What is wrong at `offset`.
    pub what: &'static str,
}

/// Why no frame starts at an offset.
fn frame_at(bytes: &[u8], at: usize) -> Result<(Frame, usize), &'static str> {
    let Some(header) = bytes.get(at..at + HEADER) else { return Err("an incomplete frame header") };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else { return Err("a frame cut short") };
    if crc32fast::hash(body) != crc {
        return Err("a frame whose checksum does not match");
    }
    let frame = Frame::decode(body).map_err(|_| "a frame that does not decode")?;
    // Every frame written has a sequence above zero (so a non-empty body):
    // a run of zero bytes is not an empty frame.
    if frame.seq == 0 {
        return Err("a frame with no sequence number");
    }
    Ok((frame, at + HEADER + len))
}

/// Scans a log's bytes (see [`Scan`]).
fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan { len: bytes.len() as u64, ..Scan::default() };
    let mut at = 0;
    while at < bytes.len() {
        match frame_at(bytes, at) {
            Ok((frame, next)) => {
                out.frames.push((at as u64, frame));
                at = next;
            }
            Err(what) => {
                let next = resync(bytes, at);
                if out.damage.is_none() {
                    out.damage = Some(Damage { offset: at as u64, until: next.unwrap_or(bytes.len()) as u64, what });
                }
                match next {
                    Some(next) => at = next,
                    None => break,
                }
            }
        }
    }
    out
}

/// The offset of the next intact frame after damage at `at`: first where the
/// damaged frame's own length says (a flipped byte in a body leaves its
/// header intact), else the first offset that holds one.
fn resync(bytes: &[u8], at: usize) -> Option<usize> {
    let claimed = bytes.get(at..at + 4).map(|l| at + HEADER + u32::from_le_bytes(l.try_into().expect("4")) as usize);
    if let Some(next) = claimed.filter(|&n| n < bytes.len())
        && frame_at(bytes, next).is_ok()
    {
        return Some(next);
    }
    (at + 1..bytes.len().saturating_sub(HEADER - 1)).find(|&p| frame_at(bytes, p).is_ok())
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
            checkpoint: false,
        }
    }

    fn seqs(scan: &Scan) -> Vec<u64> {
        scan.frames.iter().map(|(_, f)| f.seq).collect()
    }

    /// A log holding frames 1..=n, and its bytes.
    fn log(path: &Path, n: u64) -> Vec<u8> {
        std::fs::write(path, b"").unwrap();
        let (mut wal, _) = Wal::open(path).unwrap();
        for seq in 1..=n {
            wal.append(&frame(seq, "car-1")).unwrap();
        }
        std::fs::read(path).unwrap()
    }

    #[test]
    fn frames_read_back_in_order_with_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        let (_, scan) = Wal::open(&path).unwrap();
        assert!(scan.frames.is_empty() && scan.damage.is_none());
        log(&path, 3);
        let (_, scan) = Wal::open(&path).unwrap();
        assert_eq!(seqs(&scan), [1, 2, 3]);
        assert_eq!(scan.frames[1].0, (HEADER + frame(1, "car-1").encoded_len()) as u64);
        assert!(scan.damage.is_none());
    }

    #[test]
    fn a_torn_tail_is_damage_with_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        let bytes = log(&path, 4);
        for cut in [3, HEADER + 2, 1] {
            std::fs::write(&path, &bytes[..bytes.len() - cut]).unwrap();
            let (_, scan) = Wal::open(&path).unwrap();
            assert_eq!(seqs(&scan), [1, 2, 3], "cut {cut}");
            let damage = scan.damage.unwrap();
            assert_eq!(damage.until, scan.len, "nothing intact after it");
        }
        // Zeros after the last frame (space the file system allocated but
        // the crash never wrote) are no frames.
        std::fs::write(&path, [&bytes[..], &[0u8; 64][..]].concat()).unwrap();
        let (_, scan) = Wal::open(&path).unwrap();
        assert_eq!(seqs(&scan), [1, 2, 3, 4]);
        assert_eq!(scan.damage.unwrap().until, scan.len);
    }

    #[test]
    fn damage_in_the_middle_is_found_with_the_frames_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        let bytes = log(&path, 5);
        let size = HEADER + frame(1, "car-1").encoded_len();
        // A flipped byte in the body of frame 2, then in the header of frame 3.
        for (at, what) in [(size + HEADER + 2, "checksum"), (2 * size + 1, "")] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            let (_, scan) = Wal::open(&path).unwrap();
            let damage = scan.damage.clone().unwrap();
            assert!(damage.what.contains(what), "{damage:?}");
            assert!(damage.until < scan.len, "intact frames follow");
            assert_eq!(seqs(&scan).len(), 4, "every other frame is found: {:?}", seqs(&scan));
            assert!(scan.frames.iter().filter(|(o, _)| *o > damage.offset).count() >= 2);
        }
    }

    #[test]
    fn reset_leaves_a_marker_and_appends_start_again_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wal");
        log(&path, 2);
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.reset(8).unwrap();
        wal.append(&frame(9, "car-9")).unwrap();
        drop(wal);
        let (_, scan) = Wal::open(&path).unwrap();
        assert_eq!(seqs(&scan), [8, 9]);
        assert!(scan.frames[0].1.checkpoint && scan.frames[0].0 == 0 && !scan.frames[1].1.checkpoint);
        // A store that never wrote needs no marker.
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.reset(0).unwrap();
        assert_eq!(wal.len(), 0);
    }
}
