//! The files the CLI writes: plaintexts, backups, ciphertexts and reports.
//!
//! A file is written under a temporary name beside its destination and becomes the destination only once it is
//! complete and on disk, so that a crash, a kill or a failed decryption leaves the old file (or none) rather
//! than a truncated one that looks whole; and a user who deletes the original after `encrypt --file` has a
//! ciphertext that survives a power cut. The temporary name is unpredictable and created exclusively, so a
//! link planted beside the destination cannot redirect the output, and plaintexts and backups are readable by
//! their owner only from their first byte (`0600`, as OpenSSL writes private keys), whatever the umask.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Who may read what is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Plaintext, keys, backups: the owner only.
    Private,
    /// Ciphertexts, signatures, reports: what the umask allows.
    Ordinary,
}

/// A file being written towards `dest`. Dropped before [`Staged::commit`], it removes what it wrote.
pub struct Staged {
    file: File,
    dest: PathBuf,
    /// `None` when the destination is not a regular file (`/dev/stdout`, a pipe): written in place.
    tmp: Option<PathBuf>,
}

impl Staged {
    /// Starts writing towards `dest`. An existing destination that is a link is followed: the file it names
    /// is the one replaced.
    pub fn create(dest: &Path, access: Access) -> Result<Staged, String> {
        let fail = |x: std::io::Error| format!("cannot write {}: {x}", dest.display());
        if let Ok(meta) = std::fs::metadata(dest) {
            if !meta.is_file() {
                let file = OpenOptions::new().write(true).open(dest).map_err(fail)?;
                return Ok(Staged {
                    file,
                    dest: dest.to_path_buf(),
                    tmp: None,
                });
            }
        }
        let dest = match std::fs::symlink_metadata(dest) {
            Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(dest).map_err(fail)?,
            _ => dest.to_path_buf(),
        };
        let name = dest
            .file_name()
            .ok_or_else(|| format!("{} is not a file name", dest.display()))?
            .to_string_lossy()
            .into_owned();
        let dir = parent(&dest);
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(match access {
                Access::Private => 0o600,
                Access::Ordinary => 0o666,
            });
        }
        // A name taken (by an earlier run killed mid-write, or by a link someone placed) is skipped, never
        // opened.
        for _ in 0..8 {
            let tmp = dir.join(format!(".{name}.{:016x}.partial", unpredictable()));
            match opts.open(&tmp) {
                Ok(file) => {
                    return Ok(Staged {
                        file,
                        dest,
                        tmp: Some(tmp),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(fail(e)),
            }
        }
        Err(format!(
            "cannot write {}: no free temporary name beside it",
            dest.display()
        ))
    }

    /// A second handle on the file, for asynchronous writers; the data reaches the file through either.
    pub fn async_writer(&self) -> Result<tokio::fs::File, String> {
        let f = self
            .file
            .try_clone()
            .map_err(|x| format!("cannot write {}: {x}", self.dest.display()))?;
        Ok(tokio::fs::File::from_std(f))
    }

    /// Writes all of `data`.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), String> {
        self.file
            .write_all(data)
            .map_err(|x| format!("cannot write {}: {x}", self.dest.display()))
    }

    /// Flushes the file to disk, puts it in place of the destination, and flushes the directory, so that the
    /// rename itself survives a crash.
    pub fn commit(mut self) -> Result<(), String> {
        let fail = |x: std::io::Error| format!("cannot write {}: {x}", self.dest.display());
        let Some(tmp) = self.tmp.take() else {
            return self.file.flush().map_err(fail);
        };
        let done = self
            .file
            .sync_all()
            .and_then(|()| std::fs::rename(&tmp, &self.dest));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
        if let Ok(d) = File::open(parent(&self.dest)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `data` to `dest` as a whole (see the module's documentation).
pub fn write(dest: &Path, data: &[u8], access: Access) -> Result<(), String> {
    let mut staged = Staged::create(dest, access)?;
    staged.write_all(data)?;
    staged.commit()
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// 64 bits no other process can guess: `RandomState`'s keys come from the operating system's generator.
/// They only make a temporary name hard to predict; exclusive creation is what makes it safe.
fn unpredictable() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn private_files_are_the_owners_only_and_replace_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("plain.txt");
        std::fs::write(&dest, b"old").unwrap();
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let mut staged = Staged::create(&dest, Access::Private).unwrap();
        staged.write_all(b"new secret").unwrap();
        // Until it is committed, the destination is the old file and the new one is nobody else's.
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        let names = entries(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        let tmp = dir
            .path()
            .join(names.iter().find(|n| n.ends_with(".partial")).unwrap());
        assert_eq!(mode(&tmp), 0o600);
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new secret");
        assert_eq!(mode(&dest), 0o600);
        assert_eq!(entries(dir.path()), ["plain.txt"]);
    }

    #[test]
    fn ordinary_files_follow_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("ct.b64");
        write(&dest, b"ciphertext", Access::Ordinary).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"ciphertext");
        // 0666 less whatever the umask takes away: at least the owner reads and writes it.
        assert_eq!(mode(&dest) & 0o600, 0o600);
        assert_eq!(mode(&dest) & 0o111, 0);
    }

    #[test]
    fn an_abandoned_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let mut staged = Staged::create(&dest, Access::Private).unwrap();
        staged.write_all(b"half of a plaintext").unwrap();
        drop(staged);
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn a_link_at_the_destination_is_followed_and_a_planted_name_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.txt");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write(&link, b"new", Access::Private).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(mode(&target), 0o600);

        // The old fixed temporary name, pointing elsewhere: not written through.
        let elsewhere = dir.path().join("victim");
        std::fs::write(&elsewhere, b"untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("out.partial")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(".out.partial")).unwrap();
        write(&dir.path().join("out"), b"data", Access::Private).unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), b"data");
    }

    #[test]
    fn a_destination_that_is_not_a_file_is_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        write(Path::new("/dev/null"), b"discarded", Access::Private).unwrap();
        assert!(entries(dir.path()).is_empty());
        assert!(Staged::create(&dir.path().join("missing/x"), Access::Private).is_err());
    }
}
