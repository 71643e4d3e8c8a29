//! TLS 1.3 session tickets whose keys outlive the process, so that the
//! fleet reconnecting after a restart resumes its sessions instead of
//! repeating full handshakes.
//!
//! A full mTLS handshake costs the node two ECDSA verifications (the client
//! certificate's chain and its CertificateVerify) and a signature; in an
//! 18,000-vehicle reconnect storm those were 25% of the node's CPU. A resumed
//! handshake (rustls: PSK with a fresh ECDHE, so forward secrecy holds) does
//! none of them: the ticket, sealed with a key only this node holds, carries
//! the client certificate that was verified when it was issued.
//!
//! The keys live in the data directory (`tls-tickets.key`, mode 0600): whoever
//! reads that file can mint tickets for any certificate, so it is as secret as
//! the CA's key for as long as a ticket lives. A key seals tickets for one
//! lifetime and opens them for one more, then is erased. Every reload of the TLS
//! files (a new CA, a new CRL, a new server certificate) replaces both keys, so
//! no ticket from before a reload resumes. The node checks a resumed
//! session's certificate against the current CRLs and its expiry itself
//! (rustls verifies certificates in full handshakes only).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The file's first bytes (and version).
const MAGIC: &[u8; 4] = b"TTK1";
/// A key's length (ChaCha20-Poly1305).
const KEY_LEN: usize = 32;
/// A key's id, which prefixes each ticket it seals.
const ID_LEN: usize = 4;
/// The file: magic, the TLS files' fingerprint, when the current key was
/// made (seconds), the current key, whether there is a previous one, the
/// previous key.
const FILE_LEN: usize = MAGIC.len() + 8 + 8 + (ID_LEN + KEY_LEN) + 1 + (ID_LEN + KEY_LEN);

/// The name of the key file in the data directory.
const FILE: &str = "tls-tickets.key";

#[derive(Clone)]
struct Key {
    id: [u8; ID_LEN],
    raw: [u8; KEY_LEN],
}

impl Key {
    fn generate(rng: &SystemRandom) -> Key {
        let mut key = Key { id: [0; ID_LEN], raw: [0; KEY_LEN] };
        rng.fill(&mut key.id).expect("system randomness");
        rng.fill(&mut key.raw).expect("system randomness");
        key
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.raw).expect("a 32-byte key"))
    }
}

struct Keys {
    /// The TLS files (certificates, CA, CRLs) the tickets were issued under.
    fingerprint: u64,
    current: Key,
    /// When `current` began sealing.
    since: SystemTime,
    /// The key before it: opens tickets for one more lifetime.
    previous: Option<Key>,
}

impl Keys {
    fn new(rng: &SystemRandom, fingerprint: u64, now: SystemTime) -> Keys {
        Keys { fingerprint, current: Key::generate(rng), since: now, previous: None }
    }
}

/// The node's ticket keys: rustls seals and opens tickets through this
/// ([`rustls::server::ProducesTickets`]).
pub(super) struct Tickets {
    keys: RwLock<Keys>,
    /// Where the keys are kept.
    path: PathBuf,
    lifetime: Duration,
    rng: SystemRandom,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").field("path", &self.path).field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl Tickets {
    /// Loads the keys from `dir`'s key file, or makes new ones there. Keys
    /// older than the file allows are dropped, and so are keys of other TLS
    /// files than those with `fingerprint` (a CA or CRL changed while the
    /// node was down); a file that cannot be read or written gives fresh keys
    /// (and a warning): tickets are an optimisation, and a node without them
    /// does full handshakes.
    pub(super) fn open(dir: &Path, lifetime: Duration, fingerprint: u64) -> Tickets {
        let path = dir.join(FILE);
        // The store makes the directory too, but it opens after TLS.
        let _ = std::fs::create_dir_all(dir);
        let rng = SystemRandom::new();
        let now = SystemTime::now();
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).or_else(|| {
                tracing::warn!(path = %path.display(), "the TLS ticket key file is malformed; making new keys");
                None
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the TLS ticket keys; making new keys");
                None
            }
        };
        let (keys, made) = match loaded {
            Some(keys) if keys.fingerprint == fingerprint => (keys, false),
            _ => (Keys::new(&rng, fingerprint, now), true),
        };
        let tickets = Tickets { keys: RwLock::new(keys), path, lifetime, rng };
        {
            let mut keys = tickets.keys.write().unwrap_or_else(|p| p.into_inner());
            // Written only when the keys changed: a restart with valid keys
            // writes nothing.
            if tickets.age(&mut keys, now) || made {
                tickets.save(&keys);
            }
        }
        tickets
    }

    /// Throws both keys away (after a reload of the TLS files, now with
    /// `fingerprint`): no ticket issued before resumes.
    pub(super) fn reset(&self, fingerprint: u64) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *keys = Keys::new(&self.rng, fingerprint, SystemTime::now());
        self.save(&keys);
    }

    /// Rotates the keys `now` is past: the current one after a lifetime,
    /// the previous one after two. Returns whether anything changed.
    fn age(&self, keys: &mut Keys, now: SystemTime) -> bool {
        let age = now.duration_since(keys.since).unwrap_or_default();
        if age < self.lifetime {
            return false;
        }
        let next = Key::generate(&self.rng);
        let old = std::mem::replace(&mut keys.current, next);
        // Past two lifetimes the old key opens nothing still valid.
        keys.previous = (age < self.lifetime * 2).then_some(old);
        keys.since = now;
        true
    }

    fn rotate_if_due(&self) {
        let now = SystemTime::now();
        let due = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            now.duration_since(keys.since).unwrap_or_default() >= self.lifetime
        };
        if due {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            if self.age(&mut keys, now) {
                self.save(&keys);
            }
        }
    }

    /// Writes the keys (a temporary file renamed over the old one, 0600).
    fn save(&self, keys: &Keys) {
        if let Err(e) = write_file(&self.path, &serialize(keys)) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save the TLS ticket keys; tickets will not survive a restart");
        }
    }
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due();
        let key = self.keys.read().unwrap_or_else(|p| p.into_inner()).current.clone();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.id), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due();
        if ticket.len() < ID_LEN + NONCE_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            [Some(&keys.current), keys.previous.as_ref()].into_iter().flatten().find(|k| k.id == id)?.clone()
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = sealed.to_vec();
        let len = key.aead().open_in_place(nonce, Aad::from(key.id), &mut plain).ok()?.len();
        plain.truncate(len);
        Some(plain)
    }
}

fn serialize(keys: &Keys) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&keys.fingerprint.to_le_bytes());
    let since = keys.since.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    out.extend_from_slice(&since.to_le_bytes());
    out.extend_from_slice(&keys.current.id);
    out.extend_from_slice(&keys.current.raw);
    match &keys.previous {
        Some(previous) => {
            out.push(1);
            out.extend_from_slice(&previous.id);
            out.extend_from_slice(&previous.raw);
        }
        None => out.extend_from_slice(&[0; 1 + ID_LEN + KEY_LEN]),
    }
    out
}

fn parse(bytes: &[u8]) -> Option<Keys> {
    if bytes.len() != FILE_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut at = MAGIC.len();
    let mut take = |n: usize| {
        let part = &bytes[at..at + n];
        at += n;
        part
    };
    let fingerprint = u64::from_le_bytes(take(8).try_into().ok()?);
    let since = UNIX_EPOCH + Duration::from_secs(u64::from_le_bytes(take(8).try_into().ok()?));
    let key = |id: &[u8], raw: &[u8]| Some(Key { id: id.try_into().ok()?, raw: raw.try_into().ok()? });
    let current = key(take(ID_LEN), take(KEY_LEN))?;
    let has_previous = take(1)[0] == 1;
    let previous = key(take(ID_LEN), take(KEY_LEN))?;
    Some(Keys { fingerprint, current, since, previous: has_previous.then_some(previous) })
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("key.tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_ticket_opens_after_a_restart_and_not_after_a_reset_or_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let first = Tickets::open(dir.path(), HOUR, 7);
        let ticket = first.encrypt(b"session state").unwrap();
        assert_eq!(first.decrypt(&ticket).unwrap(), b"session state");

        // Another process on the same data directory opens it.
        let second = Tickets::open(dir.path(), HOUR, 7);
        assert_eq!(second.decrypt(&ticket).unwrap(), b"session state");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join(FILE)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);

        let mut tampered = ticket.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(second.decrypt(&tampered), None);
        assert_eq!(second.decrypt(&ticket[..10]), None);

        second.reset(7);
        assert_eq!(second.decrypt(&ticket), None);
        assert_eq!(Tickets::open(dir.path(), HOUR, 7).decrypt(&ticket), None, "the reset is saved");

        // Other TLS files than the tickets were issued under: none resumes.
        let ticket = Tickets::open(dir.path(), HOUR, 7).encrypt(b"session state").unwrap();
        assert_eq!(Tickets::open(dir.path(), HOUR, 8).decrypt(&ticket), None);
    }

    #[test]
    fn a_key_seals_for_one_lifetime_and_opens_for_one_more() {
        let dir = tempfile::tempdir().unwrap();
        let tickets = Tickets::open(dir.path(), HOUR, 7);
        let ticket = tickets.encrypt(b"x").unwrap();
        let start = tickets.keys.read().unwrap().since;
        {
            let mut keys = tickets.keys.write().unwrap();
            assert!(!tickets.age(&mut keys, start + HOUR / 2));
            // One lifetime on: a new key seals; the old one still opens.
            assert!(tickets.age(&mut keys, start + HOUR));
        }
        assert_eq!(tickets.decrypt(&ticket).unwrap(), b"x");
        assert_ne!(tickets.encrypt(b"x").unwrap()[..ID_LEN], ticket[..ID_LEN]);
        {
            let mut keys = tickets.keys.write().unwrap();
            let since = keys.since;
            assert!(tickets.age(&mut keys, since + HOUR));
        }
        assert_eq!(tickets.decrypt(&ticket), None, "two lifetimes on, the first key is gone");

        // A file left for longer than two lifetimes keeps no key at all.
        let stale = {
            let keys = tickets.keys.read().unwrap();
            Keys {
                fingerprint: keys.fingerprint,
                current: keys.current.clone(),
                since: SystemTime::now() - HOUR * 3,
                previous: keys.previous.clone(),
            }
        };
        let recent = tickets.encrypt(b"y").unwrap();
        write_file(&dir.path().join(FILE), &serialize(&stale)).unwrap();
        let reopened = Tickets::open(dir.path(), HOUR, 7);
        assert_eq!(reopened.decrypt(&recent), None);
        assert!(reopened.keys.read().unwrap().previous.is_none());
    }

    #[test]
    fn a_malformed_key_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not keys").unwrap();
        let tickets = Tickets::open(dir.path(), HOUR, 7);
        let ticket = tickets.encrypt(b"z").unwrap();
        assert_eq!(Tickets::open(dir.path(), HOUR, 7).decrypt(&ticket).unwrap(), b"z");
    }
}
