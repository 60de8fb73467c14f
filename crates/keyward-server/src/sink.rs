//! The JSON-lines audit file: one stored record per line, appended after each durable batch.
//!
//! At start the file's last complete line tells which record it holds last; a torn last line (a crash in the
//! middle of a write) is cut off, and the writer appends what the store has beyond it. Lines are the store's
//! own record bytes, hashes included, so the file can be verified independently of the database.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use keyward_core::audit::AuditSink;

/// A JSON-lines audit file.
pub struct FileSink {
    file: File,
}

impl FileSink {
    /// Opens (creating, mode 0600) the file at `path`.
    pub fn open(path: &Path) -> std::io::Result<FileSink> {
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        Ok(FileSink {
            file: opts.open(path)?,
        })
    }
}

fn seq_of(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    rest.split(',').next()?.parse().ok()
}

impl AuditSink for FileSink {
    fn last_seq(&mut self) -> std::io::Result<u64> {
        let len = self.file.metadata()?.len();
        // Read the tail: enough for the last record (records are far below 64 KiB).
        let start = len.saturating_sub(64 * 1024);
        self.file.seek(SeekFrom::Start(start))?;
        let mut tail = String::new();
        self.file.read_to_string(&mut tail)?;
        if !tail.is_empty() && !tail.ends_with('\n') {
            // A torn write: drop the partial line.
            let keep = tail.rfind('\n').map(|i| i + 1).unwrap_or(0);
            self.file.set_len(start + keep as u64)?;
            tail.truncate(keep);
        }
        Ok(tail.lines().last().and_then(seq_of).unwrap_or(0))
    }

    fn write(&mut self, records: &[&str]) -> std::io::Result<()> {
        let mut buf = String::with_capacity(records.iter().map(|r| r.len() + 1).sum());
        for r in records {
            buf.push_str(r);
            buf.push('\n');
        }
        self.file.write_all(buf.as_bytes())
    }
}

/// Audit records to the local syslog daemon (facility `log audit`, severity info), one datagram each.
///
/// Syslog cannot be asked what it has, so the last sequence number sent is kept in a small state file beside
/// the database. After a crash between a send and the state update, the last batch is sent again: syslog
/// receives every record at least once, the JSON-lines file exactly once.
#[cfg(unix)]
pub struct SyslogSink {
    socket: std::os::unix::net::UnixDatagram,
    target: std::path::PathBuf,
    state: std::path::PathBuf,
}

#[cfg(unix)]
impl SyslogSink {
    /// Sends to the datagram socket at `target` (usually `/dev/log`), remembering progress in `state`.
    pub fn open(target: &Path, state: &Path) -> std::io::Result<SyslogSink> {
        // A socket nobody listens on would swallow every record: refuse it at start.
        std::os::unix::net::UnixDatagram::unbound()?.connect(target)?;
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        Ok(SyslogSink {
            socket,
            target: target.to_path_buf(),
            state: state.to_path_buf(),
        })
    }
}

#[cfg(unix)]
impl AuditSink for SyslogSink {
    fn last_seq(&mut self) -> std::io::Result<u64> {
        match std::fs::read_to_string(&self.state) {
            Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn write(&mut self, records: &[&str]) -> std::io::Result<()> {
        let mut last = None;
        for r in records {
            // <110> = facility 13 (log audit) * 8 + severity 6 (informational).
            let line = format!("<110>keyward[{}]: {r}", std::process::id());
            self.socket.send_to(line.as_bytes(), &self.target)?;
            last = seq_of(r);
        }
        if let Some(seq) = last {
            let tmp = self.state.with_extension("tmp");
            std::fs::write(&tmp, seq.to_string())?;
            std::fs::rename(&tmp, &self.state)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_lines_are_cut_and_the_last_seq_read() {
        let dir = std::env::temp_dir().join(format!("keyward-sink-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut s = FileSink::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.last_seq().unwrap_or(99), 0);
        s.write(&["{\"seq\":1,\"a\":1}", "{\"seq\":2,\"a\":2}"])
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"seq\":3,\"a\""))
            .unwrap_or_default();
        let mut s = FileSink::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.last_seq().unwrap_or(0), 2);
        assert_eq!(
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .count(),
            2
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_syslog_socket_nobody_listens_on_is_refused_and_a_lost_listener_fails_writes() {
        let dir = std::env::temp_dir().join(format!("keyward-syslog-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let (log, state) = (dir.join("log"), dir.join("state"));
        let _ = std::fs::remove_file(&log);
        assert!(SyslogSink::open(&log, &state).is_err(), "a missing socket");
        let listener =
            std::os::unix::net::UnixDatagram::bind(&log).unwrap_or_else(|e| panic!("{e}"));
        let mut sink = SyslogSink::open(&log, &state).unwrap_or_else(|e| panic!("{e}"));
        sink.write(&["{\"seq\":1,\"a\":1}"])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut got = [0u8; 256];
        let n = listener.recv(&mut got).unwrap_or_default();
        assert!(String::from_utf8_lossy(&got[..n]).contains("{\"seq\":1,\"a\":1}"));
        assert_eq!(sink.last_seq().unwrap_or(0), 1);
        // The daemon goes away: the write fails (and the writer counts it and retries from the store).
        drop(listener);
        let _ = std::fs::remove_file(&log);
        assert!(sink.write(&["{\"seq\":2,\"a\":2}"]).is_err());
        assert_eq!(sink.last_seq().unwrap_or(0), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
