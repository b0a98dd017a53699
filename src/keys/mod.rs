//! The node's key pairs and their files.
//!
//! Identity: Ed25519 (signs `sign` texts and VerLoc replies). Sphinx: X25519 (unwraps packets).
//! Noise: X25519 (the node's end of Noise links, [`NoiseKey`]).
//! Each key lives in its own PEM file under `data/`; the PEM body is the raw 32 key bytes.
//! Private files are written with mode 0600. People see keys in base58.
//!
//! This module does not decide where files live (see [`crate::config`]) and never overwrites
//! an existing key file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};

/// Length in bytes of every key this node stores.
pub const KEY_LENGTH: usize = 32;

/// PEM tag of the private identity key file.
pub const PEM_TAG_IDENTITY_PRIVATE: &str = "ED25519 PRIVATE KEY";
/// PEM tag of the public identity key file.
pub const PEM_TAG_IDENTITY_PUBLIC: &str = "ED25519 PUBLIC KEY";
/// PEM tag of the private Sphinx key file.
pub const PEM_TAG_SPHINX_PRIVATE: &str = "X25519 PRIVATE KEY";
/// PEM tag of the public Sphinx key file.
pub const PEM_TAG_SPHINX_PUBLIC: &str = "X25519 PUBLIC KEY";

/// Errors reading or writing key files. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read. (The I/O error is part of the message, not a `source`,
    /// so that it is printed once.)
    #[error("cannot read key file {path}: {cause}. Fix: {}", read_fix(.cause, .path))]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write key file {path}: {cause}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A private key file that others may read.
    #[error("private key file {path} can be read by others (mode {mode:03o}); refusing to use it, as ssh does with such keys: whoever could read it may hold this node's identity. Fix: chmod 600 {path}, and if other users could log in here, treat the key as exposed")]
    ReadableByOthers {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not PEM, or has the wrong tag.
    #[error("key file {path} is not a PEM file with tag \"{expected_tag}\": {detail}. Fix: restore the file from your backup")]
    BadPem {
        /// The key file.
        path: PathBuf,
        /// The tag this file must carry.
        expected_tag: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The PEM body is not 32 bytes.
    #[error("key file {path} holds {actual} bytes of key, expected {KEY_LENGTH}. Fix: restore the file from your backup")]
    BadLength {
        /// The key file.
        path: PathBuf,
        /// The length found.
        actual: usize,
    },
    /// The public key file does not match the private one.
    #[error("public key file {public} does not match private key file {private}. Fix: restore both from the same backup")]
    Mismatch {
        /// The private key file.
        private: PathBuf,
        /// The public key file.
        public: PathBuf,
    },
}

/// Paths of the four key files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPaths {
    /// Ed25519 private key.
    pub private_identity: PathBuf,
    /// Ed25519 public key.
    pub public_identity: PathBuf,
    /// X25519 private key.
    pub private_sphinx: PathBuf,
    /// X25519 public key.
    pub public_sphinx: PathBuf,
}

impl KeyPaths {
    /// The default file names inside a node's `data/` folder.
    pub fn in_data_dir(data_dir: &Path) -> KeyPaths {
        KeyPaths {
            private_identity: data_dir.join("private_identity.pem"),
            public_identity: data_dir.join("public_identity.pem"),
            private_sphinx: data_dir.join("private_sphinx.pem"),
            public_sphinx: data_dir.join("public_sphinx.pem"),
        }
    }

    /// The four key files.
    pub fn all(&self) -> [&Path; 4] {
        [
            &self.private_identity,
            &self.public_identity,
            &self.private_sphinx,
            &self.public_sphinx,
        ]
    }

    /// True when any of the four files (or a Noise key file) exists.
    pub fn any_exists(&self) -> bool {
        self.all().iter().any(|p| p.exists()) || self.noise().any_exists()
    }

    /// The Noise key pair's files, beside the private identity key.
    pub fn noise(&self) -> NoiseKeyPaths {
        NoiseKeyPaths::beside(&self.private_identity)
    }
}

/// The node's keys, loaded and checked.
pub struct NodeKeys {
    /// Ed25519 identity key.
    pub identity: SigningKey,
    /// X25519 Sphinx key.
    pub sphinx: StaticSecret,
    /// X25519 Noise key pair (None for a node made before Noise, until `upgrade`).
    pub noise: Option<NoiseKey>,
}

impl NodeKeys {
    /// Fresh random keys from the operating system's generator.
    pub fn generate() -> Result<NodeKeys, getrandom::Error> {
        let mut identity = [0u8; KEY_LENGTH];
        let mut sphinx = [0u8; KEY_LENGTH];
        getrandom::fill(&mut identity)?;
        getrandom::fill(&mut sphinx)?;
        Ok(NodeKeys {
            identity: SigningKey::from_bytes(&identity),
            sphinx: StaticSecret::from(sphinx),
            noise: Some(NoiseKey::generate()?),
        })
    }

    /// The Ed25519 public key.
    pub fn identity_public(&self) -> VerifyingKey {
        self.identity.verifying_key()
    }

    /// The X25519 public key.
    pub fn sphinx_public(&self) -> PublicKey {
        PublicKey::from(&self.sphinx)
    }

    /// The identity public key in base58, as people see it.
    pub fn identity_base58(&self) -> String {
        bs58::encode(self.identity_public().as_bytes()).into_string()
    }

    /// The Sphinx public key in base58, as people see it.
    pub fn sphinx_base58(&self) -> String {
        bs58::encode(self.sphinx_public().as_bytes()).into_string()
    }

    /// Sign `message` with the identity key; the signature in base58.
    pub fn sign_base58(&self, message: &[u8]) -> String {
        bs58::encode(self.identity.sign(message).to_bytes()).into_string()
    }

    /// Write the four files, and the Noise pair when there is one. Refuses (without writing
    /// anything) when any already exists.
    pub fn write_new(&self, paths: &KeyPaths) -> Result<(), KeyError> {
        let noise = paths.noise();
        let files = paths
            .all()
            .into_iter()
            .chain([&*noise.private, &*noise.public]);
        if let Some(existing) = files.into_iter().find(|p| p.exists()) {
            return Err(KeyError::Write {
                path: existing.to_path_buf(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite an existing key file",
                ),
            });
        }
        write_pem(
            &paths.private_identity,
            PEM_TAG_IDENTITY_PRIVATE,
            &self.identity.to_bytes(),
            true,
        )?;
        write_pem(
            &paths.public_identity,
            PEM_TAG_IDENTITY_PUBLIC,
            self.identity_public().as_bytes(),
            false,
        )?;
        write_pem(
            &paths.private_sphinx,
            PEM_TAG_SPHINX_PRIVATE,
            self.sphinx.as_bytes(),
            true,
        )?;
        write_pem(
            &paths.public_sphinx,
            PEM_TAG_SPHINX_PUBLIC,
            self.sphinx_public().as_bytes(),
            false,
        )?;
        match &self.noise {
            Some(noise) => noise.write_new(&paths.noise()),
            None => Ok(()),
        }
    }

    /// Read and check the four files: tags, lengths, and that each public key matches its
    /// private key.
    pub fn load(paths: &KeyPaths) -> Result<NodeKeys, KeyError> {
        let identity = SigningKey::from_bytes(&read_pem(
            &paths.private_identity,
            PEM_TAG_IDENTITY_PRIVATE,
        )?);
        let identity_public = read_pem(&paths.public_identity, PEM_TAG_IDENTITY_PUBLIC)?;
        if identity.verifying_key().as_bytes() != &identity_public {
            return Err(KeyError::Mismatch {
                private: paths.private_identity.clone(),
                public: paths.public_identity.clone(),
            });
        }
        let sphinx = StaticSecret::from(read_pem(&paths.private_sphinx, PEM_TAG_SPHINX_PRIVATE)?);
        let sphinx_public = read_pem(&paths.public_sphinx, PEM_TAG_SPHINX_PUBLIC)?;
        if PublicKey::from(&sphinx).as_bytes() != &sphinx_public {
            return Err(KeyError::Mismatch {
                private: paths.private_sphinx.clone(),
                public: paths.public_sphinx.clone(),
            });
        }
        let noise = NoiseKey::load(&paths.noise())?;
        Ok(NodeKeys {
            identity,
            sphinx,
            noise,
        })
    }
}

/// PEM tag of the private Noise key file.
pub const PEM_TAG_NOISE_PRIVATE: &str = "X25519 NOISE PRIVATE KEY";
/// PEM tag of the public Noise key file.
pub const PEM_TAG_NOISE_PUBLIC: &str = "X25519 NOISE PUBLIC KEY";

/// Paths of the Noise key pair (`x25519-noise`): in the folder of the private identity key,
/// so that every node, however old its config, finds them in the same place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoiseKeyPaths {
    /// X25519 Noise private key.
    pub private: PathBuf,
    /// X25519 Noise public key.
    pub public: PathBuf,
}

impl NoiseKeyPaths {
    /// The Noise key files beside `private_identity`.
    pub fn beside(private_identity: &Path) -> NoiseKeyPaths {
        let dir = private_identity.parent().unwrap_or(Path::new("."));
        NoiseKeyPaths {
            private: dir.join("private_x25519_noise.pem"),
            public: dir.join("public_x25519_noise.pem"),
        }
    }

    /// True when either file exists.
    pub fn any_exists(&self) -> bool {
        self.private.exists() || self.public.exists()
    }
}

/// The node's long-term X25519 key pair for Noise links, apart from the Sphinx key (as
/// nym-nodes keep it).
#[derive(Clone)]
pub struct NoiseKey {
    /// The private key.
    pub private: StaticSecret,
}

impl NoiseKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<NoiseKey, getrandom::Error> {
        let mut private = [0u8; KEY_LENGTH];
        getrandom::fill(&mut private)?;
        Ok(NoiseKey {
            private: StaticSecret::from(private),
        })
    }

    /// The public key.
    pub fn public(&self) -> [u8; KEY_LENGTH] {
        PublicKey::from(&self.private).to_bytes()
    }

    /// The public key in base58, as people and nym-api see it.
    pub fn public_base58(&self) -> String {
        bs58::encode(self.public()).into_string()
    }

    /// Write both files. Refuses (without writing anything) when either exists.
    pub fn write_new(&self, paths: &NoiseKeyPaths) -> Result<(), KeyError> {
        if let Some(existing) = [&paths.private, &paths.public]
            .into_iter()
            .find(|p| p.exists())
        {
            return Err(KeyError::Write {
                path: existing.clone(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite an existing key file",
                ),
            });
        }
        write_pem(
            &paths.private,
            PEM_TAG_NOISE_PRIVATE,
            self.private.as_bytes(),
            true,
        )?;
        write_pem(&paths.public, PEM_TAG_NOISE_PUBLIC, &self.public(), false)
    }

    /// Read and check both files; None when neither exists (a node made before Noise: `upgrade`
    /// makes the pair).
    pub fn load(paths: &NoiseKeyPaths) -> Result<Option<NoiseKey>, KeyError> {
        if !paths.any_exists() {
            return Ok(None);
        }
        let private = StaticSecret::from(read_pem(&paths.private, PEM_TAG_NOISE_PRIVATE)?);
        let public = read_pem(&paths.public, PEM_TAG_NOISE_PUBLIC)?;
        if PublicKey::from(&private).as_bytes() != &public {
            return Err(KeyError::Mismatch {
                private: paths.private.clone(),
                public: paths.public.clone(),
            });
        }
        Ok(Some(NoiseKey { private }))
    }
}

/// The fix for a key file that cannot be read: never a new identity for a file that is only
/// out of reach.
fn read_fix(cause: &std::io::Error, path: &Path) -> String {
    match cause.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "run the node as the user that owns the file (see `ls -l {}`), or give that user the file with chown; the key itself is fine",
            path.display()
        ),
        std::io::ErrorKind::NotFound => "restore the file from your backup (a new --id makes a new node identity, which loses this one's bond)".to_string(),
        _ => "check the disk and the file, and restore it from your backup if it is damaged".to_string(),
    }
}

/// Decode a base58 string that must hold exactly 32 bytes (a public key).
pub fn decode_base58_key(text: &str) -> Result<[u8; KEY_LENGTH], String> {
    let bytes = bs58::decode(text.trim())
        .into_vec()
        .map_err(|e| format!("'{text}' is not base58: {e}"))?;
    bytes.as_slice().try_into().map_err(|_| {
        format!(
            "'{text}' decodes to {} bytes, a key has {KEY_LENGTH}",
            bytes.len()
        )
    })
}

fn write_pem(path: &Path, tag: &str, bytes: &[u8], private: bool) -> Result<(), KeyError> {
    let text = pem::encode(&pem::Pem::new(tag, bytes.to_vec()));
    let mode = if private { 0o600 } else { 0o644 };
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|cause| KeyError::Write {
        path: path.to_path_buf(),
        cause,
    })
}

pub(crate) fn read_pem(path: &Path, tag: &'static str) -> Result<[u8; KEY_LENGTH], KeyError> {
    let read = |cause| KeyError::Read {
        path: path.to_path_buf(),
        cause,
    };
    if tag.contains("PRIVATE") {
        let mode = fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::ReadableByOthers {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let text = fs::read_to_string(path).map_err(read)?;
    let parsed = pem::parse(&text).map_err(|e| KeyError::BadPem {
        path: path.to_path_buf(),
        expected_tag: tag,
        detail: e.to_string(),
    })?;
    if parsed.tag() != tag {
        return Err(KeyError::BadPem {
            path: path.to_path_buf(),
            expected_tag: tag,
            detail: format!("found tag \"{}\"", parsed.tag()),
        });
    }
    parsed
        .contents()
        .try_into()
        .map_err(|_| KeyError::BadLength {
            path: path.to_path_buf(),
            actual: parsed.contents().len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn write_then_load_round_trips_and_sets_modes() {
        let dir = tempfile::tempdir().unwrap();
        let paths = KeyPaths::in_data_dir(dir.path());
        let keys = NodeKeys::generate().unwrap();
        keys.write_new(&paths).unwrap();
        let loaded = NodeKeys::load(&paths).unwrap();
        assert_eq!(loaded.identity_base58(), keys.identity_base58());
        assert_eq!(loaded.sphinx_base58(), keys.sphinx_base58());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.private_identity), 0o600);
        assert_eq!(mode(&paths.private_sphinx), 0o600);
        assert_eq!(mode(&paths.public_sphinx), 0o644);
        assert!(keys.write_new(&paths).is_err(), "must not overwrite");
    }

    #[test]
    fn the_noise_key_pair_round_trips_and_a_node_without_one_loads_none() {
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("private_identity.pem");
        let paths = NoiseKeyPaths::beside(&identity);
        assert!(NoiseKey::load(&paths).unwrap().is_none());
        let key = NoiseKey::generate().unwrap();
        key.write_new(&paths).unwrap();
        let loaded = NoiseKey::load(&paths).unwrap().unwrap();
        assert_eq!(loaded.public_base58(), key.public_base58());
        assert_eq!(
            loaded.public(),
            crate::noise::link::public_key(key.private.as_bytes())
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.private), 0o600);
        assert!(key.write_new(&paths).is_err(), "must not overwrite");
        // Half a pair is an error that names the missing file, not "no key".
        fs::remove_file(&paths.public).unwrap();
        let err = NoiseKey::load(&paths).err().unwrap().to_string();
        assert!(err.contains("public_x25519_noise.pem"), "{err}");
        NoiseKey::generate()
            .unwrap()
            .write_new(&NoiseKeyPaths::beside(&dir.path().join("other/x")))
            .err()
            .unwrap();
    }

    #[test]
    fn signature_verifies_against_base58_key() {
        let keys = NodeKeys::generate().unwrap();
        let sig = keys.sign_base58(b"hello");
        let key = decode_base58_key(&keys.identity_base58()).unwrap();
        let key = VerifyingKey::from_bytes(&key).unwrap();
        let sig: [u8; 64] = bs58::decode(sig).into_vec().unwrap().try_into().unwrap();
        key.verify(b"hello", &Signature::from_bytes(&sig)).unwrap();
        assert!(key.verify(b"hellO", &Signature::from_bytes(&sig)).is_err());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let paths = KeyPaths::in_data_dir(dir.path());
        NodeKeys::generate().unwrap().write_new(&paths).unwrap();
        fs::write(
            &paths.public_sphinx,
            pem::encode(&pem::Pem::new(PEM_TAG_SPHINX_PUBLIC, vec![1u8; 31])),
        )
        .unwrap();
        let err = NodeKeys::load(&paths).err().unwrap().to_string();
        assert!(
            err.contains("public_sphinx.pem") && err.contains("31 bytes"),
            "{err}"
        );
        fs::write(&paths.public_sphinx, "not pem").unwrap();
        let err = NodeKeys::load(&paths).err().unwrap().to_string();
        assert!(err.contains("not a PEM file"), "{err}");
        fs::remove_file(&paths.private_identity).unwrap();
        let err = NodeKeys::load(&paths).err().unwrap().to_string();
        assert!(err.contains("private_identity.pem"), "{err}");
    }

    #[test]
    fn base58_key_decoding_rejects_wrong_lengths() {
        assert!(decode_base58_key("3yZe7d").is_err());
        assert!(decode_base58_key("0OIl").is_err());
    }
}
