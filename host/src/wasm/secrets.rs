//! Secrets: where the host reads the values of the secrets a service's
//! environment refers to (see [`crate::values::capabilities::EnvValue`]).
//! A value is read each time an instance is made, so an updated secret
//! takes effect at the next invocation, and it is never stored.

use crate::values::capabilities::SecretName;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the host reads secrets: a file per secret in a directory (the
/// file must not be readable by group or others), else an environment
/// variable of the host process with a prefix.
#[derive(Clone, Debug)]
pub struct Secrets {
    dir: Option<PathBuf>,
    env_prefix: String,
}

/// The default prefix of secret environment variables.
pub const DEFAULT_SECRET_PREFIX: &str = "BERTH_SECRET_";

/// Why a secret could not be read. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Neither a file nor an environment variable holds it.
    #[error("secret {name:?} is not set (no file {file} and no environment variable {var})")]
    Missing {
        /// The secret.
        name: String,
        /// The file looked for.
        file: String,
        /// The variable looked for.
        var: String,
    },
    /// Its file is readable by others.
    #[error("secret file {file} is readable by group or others (mode {mode:03o}); make it 0600")]
    Exposed {
        /// The file.
        file: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Its file could not be read, or is not text.
    #[error("secret file {file} cannot be read: {error}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        error: String,
    },
}

impl Secrets {
    /// Secrets from files in `dir` (if any), else from environment
    /// variables starting with `env_prefix`.
    pub fn new(dir: Option<PathBuf>, env_prefix: impl Into<String>) -> Secrets {
        Secrets {
            dir,
            env_prefix: env_prefix.into(),
        }
    }

    /// The directory, if there is one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Reads a secret now. A trailing newline of a file is dropped (files
    /// written by `echo` have one).
    pub fn read(&self, name: &SecretName) -> Result<String, SecretError> {
        let var = name.env_var(&self.env_prefix);
        let file = self.dir.as_ref().map(|d| d.join(name.as_str()));
        if let Some(file) = &file {
            match read_secret_file(file) {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(value) = std::env::var_os(&var) {
            return value.into_string().map_err(|_| SecretError::Unreadable {
                file: format!("${var}"),
                error: "not valid UTF-8".into(),
            });
        }
        Err(SecretError::Missing {
            name: name.to_string(),
            file: file.map_or_else(
                || "(no secrets directory)".into(),
                |f| f.display().to_string(),
            ),
            var,
        })
    }
}

/// The largest secret read, in bytes.
const MAX_SECRET: u64 = 64 * 1024;

/// A secret's file: `None` when it does not exist.
fn read_secret_file(file: &Path) -> Result<Option<String>, SecretError> {
    use std::io::Read;
    let unreadable = |e: &dyn fmt::Display| SecretError::Unreadable {
        file: file.display().to_string(),
        error: e.to_string(),
    };
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(&e)),
    };
    let meta = f.metadata().map_err(|e| unreadable(&e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Exposed {
                file: file.display().to_string(),
                mode,
            });
        }
    }
    if !meta.is_file() {
        return Err(unreadable(&"not a regular file"));
    }
    if meta.len() > MAX_SECRET {
        return Err(unreadable(&format!("larger than {MAX_SECRET} bytes")));
    }
    let mut value = String::new();
    f.take(MAX_SECRET + 1)
        .read_to_string(&mut value)
        .map_err(|e| unreadable(&e))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.contains('\0') {
        return Err(unreadable(&"contains NUL"));
    }
    Ok(Some(value))
}

impl Default for Secrets {
    /// Only `BERTH_SECRET_*` environment variables.
    fn default() -> Self {
        Secrets::new(None, DEFAULT_SECRET_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_private_files_then_the_environment() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::new(Some(dir.path().to_owned()), "BERTH_TEST_SECRET_");
        let name = SecretName::parse("db-password").unwrap();
        assert!(matches!(
            secrets.read(&name),
            Err(SecretError::Missing { .. })
        ));
        let file = dir.path().join("db-password");
        std::fs::write(&file, "hunter2\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = secrets.read(&name).unwrap_err();
        assert!(matches!(exposed, SecretError::Exposed { mode: 0o644, .. }));
        assert!(!exposed.to_string().contains("hunter2"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(secrets.read(&name).unwrap(), "hunter2");
        std::fs::write(&file, "changed").unwrap();
        assert_eq!(secrets.read(&name).unwrap(), "changed");
        let other = SecretName::parse("api-key").unwrap();
        // SAFETY: this test's variable is used by no other test.
        unsafe { std::env::set_var("BERTH_TEST_SECRET_API_KEY", "k3y") };
        assert_eq!(secrets.read(&other).unwrap(), "k3y");
    }
}
