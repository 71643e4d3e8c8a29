//! The contract version in `proto/VERSION`: strict `MAJOR.MINOR.PATCH` semver
//! (no pre-release or build suffix), and the bump a change needs.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// A `MAJOR.MINOR.PATCH` version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incremented for breaking changes.
    pub major: u64,
    /// Incremented for additions.
    pub minor: u64,
    /// Incremented for anything else.
    pub patch: u64,
}

impl Version {
    /// Parses `1.2.3` (no leading zeros, no suffix).
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.');
        let mut next = || {
            let p = parts.next()?;
            let valid = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'));
            if valid { p.parse().ok() } else { None }
        };
        let v = Version { major: next()?, minor: next()?, patch: next()? };
        if parts.next().is_some() { None } else { Some(v) }
    }

    /// Reads and parses `proto/VERSION` under `root`.
    pub fn read(root: &Path) -> Result<Version> {
        let path = root.join("proto/VERSION");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let text = text.trim();
        match Version::parse(text) {
            Some(v) => Ok(v),
            None => bail!("proto/VERSION: {text:?} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.2.0)"),
        }
    }

    /// The smallest version after `self` that a change of this kind needs.
    pub fn bumped(self, bump: Bump) -> Version {
        match bump {
            Bump::None => self,
            Bump::Patch => Version { patch: self.patch + 1, ..self },
            Bump::Minor => Version { minor: self.minor + 1, patch: 0, ..self },
            Bump::Major => Version { major: self.major + 1, minor: 0, patch: 0 },
        }
    }

    /// The kind of bump from `self` to `to` (`None` when equal or lower).
    pub fn bump_to(self, to: Version) -> Bump {
        if to.major > self.major {
            Bump::Major
        } else if to.major == self.major && to.minor > self.minor {
            Bump::Minor
        } else if to.major == self.major && to.minor == self.minor && to.patch > self.patch {
            Bump::Patch
        } else {
            Bump::None
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// How much a version must grow, ordered from none to major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bump {
    /// Nothing a consumer can see changed (comments, formatting).
    None,
    /// A compatible fix.
    Patch,
    /// A compatible addition (or a deprecation).
    Minor,
    /// A breaking change.
    Major,
}

impl fmt::Display for Bump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bump::None => "none",
            Bump::Patch => "patch",
            Bump::Minor => "minor",
            Bump::Major => "major",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strict_semver_only() {
        assert_eq!(Version::parse("1.20.3"), Some(Version { major: 1, minor: 20, patch: 3 }));
        for bad in ["1.0", "1.0.0.0", "01.0.0", "1.0.0-rc1", "v1.0.0", "", "1..0", "1.0.x"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bumps() {
        let v = Version::parse("1.2.3").unwrap();
        assert_eq!(v.bumped(Bump::Major).to_string(), "2.0.0");
        assert_eq!(v.bumped(Bump::Minor).to_string(), "1.3.0");
        assert_eq!(v.bump_to(Version::parse("1.3.0").unwrap()), Bump::Minor);
        assert_eq!(v.bump_to(Version::parse("1.2.3").unwrap()), Bump::None);
        assert_eq!(v.bump_to(Version::parse("1.1.9").unwrap()), Bump::None);
    }
}
