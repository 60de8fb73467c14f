//! Secrets the CLI reads: passwords and unseal shares.
//!
//! From a pipe or a file they are read whole, as scripts give them. Typed at a terminal they are asked for
//! on stderr and read with the terminal's echo off, so that they never appear on the screen, in the
//! terminal's scrollback or in a recording of the session (as `vault operator unseal` and `ssh` read theirs).
//! The terminal's settings are restored when the line is read, on error, and on Ctrl-C.

use std::io::{BufRead, IsTerminal, Read, Write};

use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions, Termios};
use zeroize::Zeroizing;

/// Whether secrets are typed by a person rather than given by a program.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// All of stdin, as text: the non-interactive form of every secret.
pub fn all_of_stdin(what: &str) -> Result<Zeroizing<String>, String> {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    std::io::stdin()
        .lock()
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "nothing on standard input for {what}: pipe it in, or run at a terminal to be asked for it"
        ));
    }
    text(buf, what)
}

/// Lines typed after `prompt` without echo, up to the first empty one (or only the first when `one`).
pub async fn hidden(prompt: &str, one: bool, what: &str) -> Result<Zeroizing<String>, String> {
    let stdin = std::io::stdin();
    let original = tcgetattr(&stdin).map_err(|e| format!("cannot use the terminal: {e}"))?;
    let mut quiet = original.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    // The newline that ends a line still shows, so the next prompt starts on a line of its own.
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)
        .map_err(|e| format!("cannot use the terminal: {e}"))?;
    let restore = Restore(original);
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let reading = tokio::task::spawn_blocking(move || read_lines(one));
    let read = tokio::select! {
        read = reading => read.map_err(|_| "cannot read the terminal".to_string()),
        _ = tokio::signal::ctrl_c() => {
            // `exit` runs no destructors: the terminal is put back here.
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &restore.0);
            eprintln!();
            std::process::exit(130);
        }
    };
    drop(restore);
    text(read??, what)
}

/// A password typed twice, so that a typing error does not become the password.
pub async fn new_password() -> Result<Zeroizing<String>, String> {
    let first = hidden("Password: ", true, "the password").await?;
    let again = hidden("Password again: ", true, "the password").await?;
    if first.is_empty() {
        return Err("the password is empty".into());
    }
    if *first != *again {
        return Err("the two passwords differ; nothing was changed".into());
    }
    Ok(first)
}

fn read_lines(one: bool) -> Result<Zeroizing<Vec<u8>>, String> {
    // Room for any password or set of shares, so that the buffer is never moved (which would leave an unwiped
    // copy behind).
    let mut buf = Zeroizing::new(Vec::with_capacity(64 * 1024));
    let mut stdin = std::io::stdin().lock();
    loop {
        let start = buf.len();
        let n = stdin
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("cannot read the terminal: {e}"))?;
        let line = buf.get(start..).unwrap_or_default();
        if one || n == 0 || line.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(buf);
        }
    }
}

fn text(bytes: Zeroizing<Vec<u8>>, what: &str) -> Result<Zeroizing<String>, String> {
    match std::str::from_utf8(&bytes) {
        Ok(s) => {
            let mut out = Zeroizing::new(String::with_capacity(s.len()));
            out.push_str(s);
            Ok(out)
        }
        Err(_) => Err(format!("{what} is not text")),
    }
}

/// Puts the terminal back as it was.
struct Restore(Termios);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
    }
}
