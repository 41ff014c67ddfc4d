//! The admin token a host makes for itself, and how the CLI on the same
//! machine finds it.
//!
//! A host started without a token (no `--admin-token`, `BERTH_TOKEN` or
//! `--admin-token-file`) and with its admin API on loopback uses the token
//! in `STATE/admin.token`, making it on first start: 32 random bytes,
//! base64url, in a file only its owner may read (mode 0600). It then
//! notes where that file is under the user's state directory
//! (`$XDG_STATE_HOME/berth/hosts/ADDR`, by default
//! `~/.local/state/berth/hosts/ADDR`), so that `berth ls` and the other
//! client commands of the same user find the token by the admin address
//! alone. The note holds the path (and the host's process id), never the
//! token; the CLI trusts it only while that process is alive and only if
//! the note and the token file are the user's own, so a note left by a
//! host that died cannot send the token to whoever took its port.

use anyhow::Context;
use base64::Engine;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The token file in a state directory.
pub const TOKEN_FILE: &str = "admin.token";

/// The token in `state`'s token file, made now if there is none.
pub fn ensure(state: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = state.join(TOKEN_FILE);
    std::fs::create_dir_all(state)
        .with_context(|| format!("creating the state directory {}", state.display()))?;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = first_line(&text);
            anyhow::ensure!(
                !token.is_empty(),
                "the admin token file {} is empty; remove it to have a new one made",
                path.display()
            );
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            anyhow::ensure!(
                mode & 0o077 == 0,
                "the admin token file {} is open to group or others (mode {mode:03o}): make it 0600 (chmod 600), or remove it to have a new one made",
                path.display()
            );
            Ok((token, path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating the admin token file {}", path.display()))?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing the admin token file {}", path.display()))?;
            Ok((token, path))
        }
        Err(e) => {
            Err(e).with_context(|| format!("reading the admin token from {}", path.display()))
        }
    }
}

/// A token's first line, trimmed.
pub fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

/// The note that tells the CLI where the token of the admin API at an
/// address is; removed when dropped (the host stopped).
#[derive(Debug)]
pub struct Note(PathBuf);

impl Drop for Note {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Notes that the admin API at `addr` takes the token in `file`. Best
/// effort: without a home directory there is no note, and the CLI needs
/// the token given.
pub fn note(addr: SocketAddr, file: &Path) -> Option<Note> {
    let dir = notes_dir()?;
    std::fs::create_dir_all(&dir).ok()?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let path = dir.join(note_name(&addr.to_string()));
    let file = std::path::absolute(file).ok()?;
    let _ = std::fs::remove_file(&path);
    let mut note = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .ok()?;
    note.write_all(format!("{}\n{}\n", file.display(), std::process::id()).as_bytes())
        .ok()?;
    Some(Note(path))
}

/// The token of the admin API at `authority` (`HOST:PORT`), as noted by a
/// host of this user on this machine.
pub fn find(authority: &str) -> Option<String> {
    let dir = notes_dir()?;
    let authority = match authority.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => authority.to_owned(),
    };
    let note_path = dir.join(note_name(&authority));
    if !private_and_mine(&note_path) {
        return None;
    }
    let note = std::fs::read_to_string(&note_path).ok()?;
    let mut lines = note.lines();
    let file = PathBuf::from(lines.next()?.trim());
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists and
    // may be signalled by this user.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return None;
    }
    if !private_and_mine(&file) {
        return None;
    }
    let token = first_line(&std::fs::read_to_string(file).ok()?);
    (!token.is_empty()).then_some(token)
}

/// Whether `path` is a file of this user that no one else may write.
fn private_and_mine(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    meta.is_file() && meta.uid() == me && meta.mode() & 0o022 == 0
}

fn note_name(authority: &str) -> String {
    authority
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn notes_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
        })?;
    Some(base.join("berth").join("hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (token, path) = ensure(dir.path()).unwrap();
        assert_eq!(token.len(), 43);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ensure(dir.path()).unwrap().0, token);
        assert_ne!(
            ensure(tempfile::tempdir().unwrap().path()).unwrap().0,
            token
        );
    }

    #[test]
    fn note_names_are_plain_file_names() {
        assert_eq!(note_name("127.0.0.1:3001"), "127.0.0.1_3001");
        assert_eq!(note_name("[::1]:3001"), "___1__3001");
    }
}
