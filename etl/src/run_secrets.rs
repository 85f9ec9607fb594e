//! The keys `make run` generates for the services it starts (one file each, mode 600, under
//! `var/run/` of the checkout). The ETL reads them for any key its environment leaves unset, so
//! `etl load ...` works after `make run` with nothing exported by hand.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use secrecy::SecretString;

/// The keys found in a run directory; a missing file is `None`.
#[derive(Debug)]
pub struct RunSecrets {
    pub dir: PathBuf,
    pub api_key: Option<SecretString>,
    pub s3_access_key: Option<SecretString>,
    pub s3_secret_key: Option<SecretString>,
}

impl RunSecrets {
    /// File names, as the Makefile's `secret` function writes them.
    pub const API_KEY: &str = "api-key";
    pub const S3_ACCESS_KEY: &str = "s3-access-key";
    pub const S3_SECRET_KEY: &str = "s3-secret-key";

    /// The `var/run` directory of the checkout `start` is in (the nearest ancestor with a
    /// `Cargo.toml` and a `var/run` holding at least one key), if any.
    pub fn discover(start: &Path) -> Option<PathBuf> {
        start.ancestors().find_map(|dir| {
            let run = dir.join("var").join("run");
            let has_key = [Self::API_KEY, Self::S3_ACCESS_KEY, Self::S3_SECRET_KEY]
                .iter()
                .any(|f| run.join(f).is_file());
            (dir.join("Cargo.toml").is_file() && has_key).then_some(run)
        })
    }

    /// Reads the keys in `dir`. A directory that is not there is an error (it was named).
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dir.is_dir(),
            "run directory {} does not exist (start the stack with `make run`)",
            dir.display()
        );
        let key = |name: &str| -> anyhow::Result<Option<SecretString>> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) if text.trim().is_empty() => Ok(None),
                Ok(text) => Ok(Some(text.trim().to_owned().into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            api_key: key(Self::API_KEY)?,
            s3_access_key: key(Self::S3_ACCESS_KEY)?,
            s3_secret_key: key(Self::S3_SECRET_KEY)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn keys_are_found_from_anywhere_in_the_checkout() {
        let root = tempfile::tempdir().expect("tempdir");
        let run = root.path().join("var/run");
        std::fs::create_dir_all(&run).expect("mkdir");
        std::fs::create_dir_all(root.path().join("etl/src")).expect("mkdir");
        assert_eq!(RunSecrets::discover(&root.path().join("etl/src")), None);
        std::fs::write(root.path().join("Cargo.toml"), "").expect("write");
        assert_eq!(RunSecrets::discover(root.path()), None, "no key yet");
        std::fs::write(run.join("api-key"), "0123abcd\n").expect("write");
        std::fs::write(run.join("s3-secret-key"), "").expect("write");
        assert_eq!(
            RunSecrets::discover(&root.path().join("etl/src")),
            Some(run.clone())
        );
        let secrets = RunSecrets::read(&run).expect("read");
        assert_eq!(
            secrets.api_key.as_ref().map(|k| k.expose_secret()),
            Some("0123abcd")
        );
        assert!(secrets.s3_access_key.is_none() && secrets.s3_secret_key.is_none());
        assert!(RunSecrets::read(&root.path().join("nowhere")).is_err());
    }
}
