//! Shared recording storage: a directory every node mounts (`file:///…`) or S3-compatible
//! object storage (`s3://bucket/prefix`), both through the `object_store` crate so one code
//! path serves both. A finished recording is copied there once, then read back and checked
//! against the SHA-256 its writer computed; only a verified copy is recorded in the store, so
//! any node can serve it (with Range) whichever node made it.
//!
//! Credentials for S3 come from the usual environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), never from the config file.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::config::RecordingsConfig;
use crate::media::recorder::RecordingId;

/// Upload parts of this size (S3's minimum part is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Local reads while uploading.
const READ_CHUNK: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("shared storage {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot read {path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: SHA-256 {got} does not match the recording's {want}")]
    Mismatch {
        what: String,
        got: String,
        want: String,
    },
}

/// Checks a `recordings.shared_url` value; the error says what is wrong.
pub fn check_url(s: &str) -> Result<(), String> {
    let url = url::Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match url.scheme() {
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(format!(
                    "`{s}`: a file URL names a local path: file:///mnt/recordings"
                ));
            }
            if url.path().len() <= 1 {
                return Err(format!("`{s}`: the shared directory must not be `/`"));
            }
            Ok(())
        }
        "s3" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("`{s}` has no bucket: s3://bucket/prefix"));
            }
            Ok(())
        }
        other => Err(format!(
            "`{s}`: scheme `{other}` is not supported (file:// or s3://)"
        )),
    }
}

/// Where finished recordings are shared. Cheap to clone.
#[derive(Clone)]
pub struct SharedRecordings {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
}

impl std::fmt::Debug for SharedRecordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRecordings")
            .field("url", &self.url)
            .finish()
    }
}

impl SharedRecordings {
    /// Opens the storage named by `[recordings] shared_url` (creating a shared directory if
    /// needed). `None` when it is unset.
    pub fn from_config(c: &RecordingsConfig) -> Result<Option<Self>, String> {
        let Some(raw) = &c.shared_url else {
            return Ok(None);
        };
        check_url(raw)?;
        let url = url::Url::parse(raw).map_err(|e| e.to_string())?;
        let err = |e: object_store::Error| format!("{raw}: {e}");
        let (store, prefix): (Arc<dyn ObjectStore>, ObjPath) = match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|_| format!("`{raw}` is not a local path"))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(err)?
                    .with_automatic_cleanup(true);
                (Arc::new(fs), ObjPath::default())
            }
            "s3" => {
                let bucket = url.host_str().unwrap_or_default();
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(c.s3_allow_http);
                if let Some(ep) = &c.s3_endpoint {
                    // Path-style requests: what MinIO and most S3-compatible stores expect.
                    b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
                }
                if let Some(region) = &c.s3_region {
                    b = b.with_region(region);
                }
                let s3 = b.build().map_err(err)?;
                let prefix =
                    ObjPath::parse(url.path().trim_matches('/')).map_err(|e| e.to_string())?;
                (Arc::new(s3), prefix)
            }
            other => return Err(format!("scheme `{other}` is not supported")),
        };
        Ok(Some(SharedRecordings {
            store,
            prefix,
            url: raw.clone(),
        }))
    }

    /// A store over any `ObjectStore` (tests use an in-memory one).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: &str) -> Self {
        SharedRecordings {
            store,
            prefix: ObjPath::default(),
            url: url.to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object key of a recording's audio: `<prefix>/<id>.wav`.
    pub fn key(&self, id: &RecordingId) -> String {
        self.prefix.child(format!("{id}.wav")).to_string()
    }

    fn err(&self, source: object_store::Error) -> ObjectError {
        ObjectError::Store {
            url: self.url.clone(),
            source,
        }
    }

    /// Copies `local` to the recording's key, then reads the copy back: both the bytes read
    /// locally and the bytes stored must hash to `sha256`. Returns the key. A copy that does
    /// not verify is deleted.
    pub async fn upload(
        &self,
        local: &FsPath,
        id: &RecordingId,
        sha256: &str,
    ) -> Result<String, ObjectError> {
        let key = self.key(id);
        let path = ObjPath::from(key.as_str());
        let local_err = |source| ObjectError::Local {
            path: local.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.err(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(local_err(e));
                }
            };
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if let Err(e) = writer.wait_for_capacity(4).await {
                return Err(self.err(e));
            }
            writer.write(&buf[..n]);
        }
        let local_sha = hex::encode(hasher.finalize());
        if local_sha != sha256 {
            let _ = writer.abort().await;
            return Err(ObjectError::Mismatch {
                what: format!("local file {}", local.display()),
                got: local_sha,
                want: sha256.to_string(),
            });
        }
        writer.finish().await.map_err(|e| self.err(e))?;
        let stored = self.sha256_of(&path).await?;
        if stored != sha256 {
            let _ = self.store.delete(&path).await;
            return Err(ObjectError::Mismatch {
                what: format!("shared copy {key}"),
                got: stored,
                want: sha256.to_string(),
            });
        }
        Ok(key)
    }

    async fn sha256_of(&self, path: &ObjPath) -> Result<String, ObjectError> {
        let mut stream = self
            .store
            .get(path)
            .await
            .map_err(|e| self.err(e))?
            .into_stream();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(chunk.map_err(|e| self.err(e))?);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Size of a stored object; `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        match self.store.head(&ObjPath::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Streams `range` of a stored object.
    pub async fn stream(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, ObjectError> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(&ObjPath::from(key), opts)
            .await
            .map_err(|e| self.err(e))?;
        Ok(got
            .into_stream()
            .map(|r| r.map_err(std::io::Error::other))
            .boxed())
    }

    /// Deletes a stored object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        match self.store.delete(&ObjPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("file:///mnt/recordings").is_ok());
        assert!(check_url("s3://bucket/prefix").is_ok());
        assert!(check_url("s3://bucket").is_ok());
        for bad in [
            "file:///",
            "file://host/x",
            "s3:///x",
            "http://x/y",
            "not a url",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn upload_verifies_and_serves_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        let cfg = RecordingsConfig {
            shared_url: Some(format!("file://{}", shared.display())),
            ..Default::default()
        };
        let s = SharedRecordings::from_config(&cfg).unwrap().unwrap();
        let local = dir.path().join("a.wav");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&local, &data).unwrap();
        let sha = hex::encode(Sha256::digest(&data));
        let id = RecordingId::generate(Utc::now());
        let key = s.upload(&local, &id, &sha).await.unwrap();
        assert_eq!(key, format!("{id}.wav"));
        assert_eq!(std::fs::read(shared.join(&key)).unwrap(), data);
        assert_eq!(s.size(&key).await.unwrap(), Some(100_000));
        let mut got = Vec::new();
        let mut st = s.stream(&key, 10..20).await.unwrap();
        while let Some(c) = st.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, &data[10..20]);
        // A wrong checksum is refused and nothing is left behind.
        let other = RecordingId::generate(Utc::now());
        let e = s.upload(&local, &other, &"0".repeat(64)).await.unwrap_err();
        assert!(matches!(e, ObjectError::Mismatch { .. }), "{e}");
        assert_eq!(s.size(&s.key(&other)).await.unwrap(), None);
        s.delete(&key).await.unwrap();
        s.delete(&key).await.unwrap();
        assert_eq!(s.size(&key).await.unwrap(), None);
    }
}
