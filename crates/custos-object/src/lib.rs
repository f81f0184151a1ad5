//! The tape tier: a [`Volume`] on object storage, through the `object_store`
//! crate — a local directory store (`/path/to/dir`) or S3-compatible storage
//! (`s3://bucket/prefix`).
//!
//! A tape volume is written once: every object is created with
//! `PutMode::Create` (on S3, `If-None-Match: *`), so nothing on it is ever
//! overwritten, by Custos or by a second writer racing it. Objects can be
//! deleted, as an expired tape is scratched. The object names are the
//! directory layout of a disk volume (docs/format.md, "Volume layout"), so a
//! tape volume in a directory can be read as a disk volume and back.
//!
//! S3 settings come from the environment, as every AWS tool reads them:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and
//! `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`) for a store other than AWS. An
//! endpoint given by the caller (the vault's `s3.endpoint` setting) wins.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use custos_model::{ChunkId, DatasetId};
use custos_store::{ChunkBuf, Kept, Result, StoreError, Volume};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};
use tokio::runtime::Runtime;

const LABEL: &str = "CUSTOS-VOLUME";
const LABEL_V1: &[u8] = b"custos-volume 1\n";
/// Where the write-once probe is written, and deleted at once.
const PROBE_DIR: &str = "write-once-probe";

/// Where a tape volume lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory, through object_store's file system store.
    Dir(PathBuf),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parse `s3://bucket[/prefix]` or an absolute directory path.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
            if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(ok) {
                return Err(format!("{s:?}: the bucket name must be 3 to 63 lower-case letters, digits, '-' or '.'"));
            }
            let prefix = prefix.trim_matches('/').to_string();
            if prefix.split('/').any(|p| p == "." || p == "..") {
                return Err(format!("{s:?}: the prefix may not contain '.' or '..' parts"));
            }
            return Ok(Self::S3 { bucket: bucket.into(), prefix });
        }
        if s.contains("://") {
            return Err(format!("{s:?}: only s3:// URLs and local directories are supported"));
        }
        Ok(Self::Dir(PathBuf::from(s)))
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Self::S3 { .. })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// S3 settings the caller may set over the environment's.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// A volume on object storage, written once.
pub struct ObjectVolume {
    name: String,
    location: Location,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    rt: Runtime,
    /// For a directory store: the directory, synced with `syncfs`.
    dir: Option<PathBuf>,
}

/// An object store's error in words: a failure to find credentials (the
/// client falls back to the instance metadata service, whose address means
/// nothing to most readers) says which variables to set.
fn s3_words(e: object_store::Error) -> String {
    let text = e.to_string();
    // The instance metadata service's paths, at its usual address or the
    // one AWS_METADATA_ENDPOINT names.
    if ["169.254.169.254", "/latest/api/token", "/latest/meta-data/"].iter().any(|m| text.contains(m)) {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !set("AWS_ACCESS_KEY_ID") || !set("AWS_SECRET_ACCESS_KEY") {
            return "no credentials for the object store: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set, and no instance role answered".into();
        }
        return "the object store's credentials could not be obtained from the instance role".into();
    }
    text
}

impl ObjectVolume {
    /// Create a tape volume (or adopt one that is already labelled).
    pub fn create(name: &str, location: &Location, s3: &S3Options) -> Result<Self> {
        if let Location::Dir(p) = location {
            std::fs::create_dir_all(p).map_err(|source| StoreError::Io {
                volume: format!("volume {name}"),
                path: p.clone(),
                source,
            })?;
        }
        let v = Self::connect(name, location, s3)?;
        match v.get(LABEL, "the volume label") {
            Ok(label) if label == LABEL_V1 => return Ok(v),
            Ok(_) => return Err(StoreError::NotAVolume { path: v.path_of(LABEL) }),
            Err(StoreError::Missing { .. }) => {}
            Err(e) => return Err(v.unreachable(e)),
        }
        v.probe_write_once(true)?;
        v.put_once(LABEL, LABEL_V1.to_vec())?;
        v.sync()?;
        Ok(v)
    }

    /// Open an existing tape volume; fails when it cannot be reached or has
    /// no Custos label.
    pub fn open(name: &str, location: &Location, s3: &S3Options) -> Result<Self> {
        let v = Self::connect(name, location, s3)?;
        match v.get(LABEL, "the volume label") {
            Ok(label) if label == LABEL_V1 => {}
            Ok(_) | Err(StoreError::Missing { .. }) => return Err(StoreError::NotAVolume { path: v.path_of(LABEL) }),
            Err(e) => return Err(v.unreachable(e)),
        }
        v.probe_write_once(false)?;
        Ok(v)
    }

    /// Check that the store refuses to overwrite: write a probe object
    /// twice, each time only if none exists (`If-None-Match: *` on S3). A
    /// store that lets the second write through (some S3 look-alikes
    /// ignore the condition and answer 200) is refused, since a tape
    /// volume there would not be write-once and nothing else would tell.
    /// The probe is deleted afterwards. A directory store creates files
    /// exclusively and is not probed. On `open`, credentials that may not
    /// write at all skip the probe: reading is all they can do, and any
    /// write they try fails anyway.
    fn probe_write_once(&self, adding: bool) -> Result<()> {
        if !self.location.is_s3() {
            return Ok(());
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let rel = format!("{PROBE_DIR}/{:x}-{nanos:x}", std::process::id());
        let key = self.key(&rel);
        let once = || {
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            self.rt.block_on(self.store.put_opts(&key, PutPayload::from_static(b"custos write-once probe\n"), opts))
        };
        match once() {
            Ok(_) => {}
            Err(e)
                if !adding
                    && matches!(
                        e,
                        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
                    ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(self.err(&rel, e)),
        }
        let second = once();
        let _ = self.delete(&rel);
        match second {
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
            Ok(_) => Err(StoreError::NotWriteOnce { volume: self.name.clone(), location: self.location.to_string() }),
            Err(e) => Err(self.err(&rel, e)),
        }
    }

    /// A failure to read the label means the store cannot be reached.
    fn unreachable(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Io { source, .. } => StoreError::Unreachable {
                volume: self.name.clone(),
                path: PathBuf::from(self.location.to_string()),
                source,
            },
            e => e,
        }
    }

    fn connect(name: &str, location: &Location, s3: &S3Options) -> Result<Self> {
        let vname = format!("volume {name}");
        let unreachable = |what: String| StoreError::Unreachable {
            volume: vname.clone(),
            path: PathBuf::from(location.to_string()),
            source: std::io::Error::other(what),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("custos-object")
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("cannot start the I/O runtime: {e}")))?;
        let (store, prefix, dir): (Arc<dyn ObjectStore>, String, Option<PathBuf>) = match location {
            Location::Dir(p) => {
                let fs = LocalFileSystem::new_with_prefix(p).map_err(|e| unreachable(e.to_string()))?;
                (Arc::new(fs), String::new(), Some(p.clone()))
            }
            Location::S3 { bucket, prefix } => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                    ..Default::default()
                });
                if let Some(ep) = &s3.endpoint {
                    b = b.with_endpoint(ep);
                }
                if let Some(r) = &s3.region {
                    b = b.with_region(r);
                }
                let endpoint = s3.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
                if endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) {
                    b = b.with_allow_http(true);
                }
                // An explicit endpoint is a self-hosted store: address it by path.
                if endpoint.is_some() {
                    b = b.with_virtual_hosted_style_request(false);
                }
                let s = b.build().map_err(|e| {
                    unreachable(format!(
                        "{e}; set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION (and AWS_ENDPOINT_URL for a store other than AWS)"
                    ))
                })?;
                (Arc::new(s), prefix.clone(), None)
            }
        };
        Ok(Self { name: vname, location: location.clone(), store, prefix, rt, dir })
    }

    fn key(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn path_of(&self, rel: &str) -> PathBuf {
        match &self.location {
            Location::Dir(p) => p.join(rel),
            s3 => PathBuf::from(format!("{s3}/{rel}")),
        }
    }

    fn chunk_rel(id: &ChunkId) -> String {
        let hex = id.to_hex();
        format!("chunks/{}/{hex}", &hex[..2])
    }

    fn manifest_rel(ds: &DatasetId, generation: u64) -> String {
        format!("manifests/{}/{generation:016x}", ds.to_hex())
    }

    fn err(&self, rel: &str, e: object_store::Error) -> StoreError {
        let path = self.path_of(rel);
        match e {
            object_store::Error::NotFound { .. } => {
                StoreError::Missing { volume: self.name.clone(), what: rel.to_string(), path }
            }
            other => StoreError::Io { volume: self.name.clone(), path, source: std::io::Error::other(s3_words(other)) },
        }
    }

    /// Create an object; an existing one is never replaced.
    fn put_once(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        let key = self.key(rel);
        match self.rt.block_on(self.store.put_opts(&key, PutPayload::from(bytes), opts)) {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(StoreError::Exists {
                    volume: self.name.clone(),
                    what: format!("{rel} (a tape volume is written once)"),
                    path: self.path_of(rel),
                })
            }
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Read a whole object of at most `max` bytes (`what` names it in errors).
    fn get_bounded(&self, rel: &str, what: &str, max: usize) -> Result<bytes::Bytes> {
        let key = self.key(rel);
        self.rt.block_on(async {
            let r = self.store.get_opts(&key, GetOptions::default()).await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    StoreError::Missing { volume: self.name.clone(), what: what.to_string(), path: self.path_of(rel) }
                }
                e => self.err(rel, e),
            })?;
            if r.meta.size > max as u64 {
                return Err(StoreError::TooLarge {
                    volume: self.name.clone(),
                    what: what.to_string(),
                    path: self.path_of(rel),
                    size: r.meta.size,
                    max,
                });
            }
            r.bytes().await.map_err(|e| self.err(rel, e))
        })
    }

    fn get(&self, rel: &str, what: &str) -> Result<Vec<u8>> {
        Ok(self.get_bounded(rel, what, usize::MAX)?.to_vec())
    }

    fn delete(&self, rel: &str) -> Result<()> {
        match self.rt.block_on(self.store.delete(&self.key(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }
}

impl Volume for ObjectVolume {
    fn describe(&self) -> String {
        format!("{} (tape, {})", self.name, self.location)
    }

    fn put_chunk(&self, id: &ChunkId, sealed: &[u8]) -> Result<()> {
        self.put_once(&Self::chunk_rel(id), sealed.to_vec())
    }

    fn read_chunk(&self, id: &ChunkId, buf: &mut ChunkBuf, max_len: usize) -> Result<usize> {
        let b = self.get_bounded(&Self::chunk_rel(id), &format!("chunk {id}"), max_len)?;
        buf.ensure(b.len());
        buf.slice_mut(b.len()).copy_from_slice(&b);
        Ok(b.len())
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let rel = Self::chunk_rel(id);
        match self.rt.block_on(self.store.head(&self.key(&rel))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(&rel, e)),
        }
    }

    fn chunk_len(&self, id: &ChunkId) -> Result<Option<u64>> {
        let rel = Self::chunk_rel(id);
        match self.rt.block_on(self.store.head(&self.key(&rel))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(&rel, e)),
        }
    }

    fn delete_chunk(&self, id: &ChunkId) -> Result<()> {
        self.delete(&Self::chunk_rel(id))
    }

    /// An S3 PUT is durable when acknowledged; a directory store is flushed
    /// with one `syncfs`.
    fn sync(&self) -> Result<()> {
        if let Some(dir) = &self.dir {
            let io = |source| StoreError::Io { volume: self.name.clone(), path: dir.clone(), source };
            let f = std::fs::File::open(dir).map_err(io)?;
            rustix::fs::syncfs(&f).map_err(|e| io(e.into()))?;
        }
        Ok(())
    }

    fn put_manifest(&self, ds: &DatasetId, generation: u64, sealed: &[u8]) -> Result<()> {
        self.put_once(&Self::manifest_rel(ds, generation), sealed.to_vec())?;
        self.sync()
    }

    fn read_manifest(&self, ds: &DatasetId, generation: u64) -> Result<Vec<u8>> {
        self.get(
            &Self::manifest_rel(ds, generation),
            &format!("the manifest of generation {generation} of dataset id {ds}"),
        )
    }

    fn delete_manifest(&self, ds: &DatasetId, generation: u64) -> Result<()> {
        self.delete(&Self::manifest_rel(ds, generation))
    }

    fn list(&self) -> Result<Vec<custos_store::Listed>> {
        use custos_store::{Listed, ObjectName};
        use futures_util::TryStreamExt;
        let prefix = if self.prefix.is_empty() { None } else { Some(ObjPath::from(self.prefix.as_str())) };
        let metas: Vec<object_store::ObjectMeta> =
            self.rt.block_on(self.store.list(prefix.as_ref()).try_collect()).map_err(|e| self.err("", e))?;
        let skip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let mut out = Vec::new();
        for m in metas {
            let full = m.location.to_string();
            let rel = full.get(skip..).unwrap_or_default();
            let parts: Vec<&str> = rel.split('/').collect();
            let name = match parts.as_slice() {
                ["chunks", _, n] if n.ends_with(".tmp") => ObjectName::Temp(rel.to_string()),
                ["chunks", _, n] => match ChunkId::from_hex(n) {
                    Some(id) => ObjectName::Chunk(id),
                    None => continue,
                },
                ["manifests", d, g] if g.len() == 16 => match (DatasetId::from_hex(d), u64::from_str_radix(g, 16)) {
                    (Some(d), Ok(g)) => ObjectName::Manifest(d, g),
                    _ => continue,
                },
                _ => continue,
            };
            out.push(Listed { name, len: m.size, modified: std::time::SystemTime::from(m.last_modified) });
        }
        Ok(out)
    }

    fn delete_temp(&self, name: &str) -> Result<()> {
        self.delete(name)
    }

    fn put_keystore_backup(&self, id: &str, bytes: &[u8]) -> Result<()> {
        self.put_once(&format!("keystore/{id}.ksb"), bytes.to_vec())?;
        self.sync()
    }

    fn read_keystore_backup(&self, id: &str) -> Result<Vec<u8>> {
        self.get(&format!("keystore/{id}.ksb"), &format!("keystore backup {id}"))
    }

    fn put_kept(&self, kind: Kept, id: &str, bytes: &[u8]) -> Result<()> {
        let (sub, ext) = kind.place();
        self.put_once(&format!("{sub}/{id}.{ext}"), bytes.to_vec())
    }

    fn read_kept(&self, kind: Kept, id: &str) -> Result<Vec<u8>> {
        let (sub, ext) = kind.place();
        self.get(&format!("{sub}/{id}.{ext}"), &format!("{} {id}", kind.what()))
    }

    fn delete_kept(&self, kind: Kept, id: &str) -> Result<()> {
        let (sub, ext) = kind.place();
        self.delete(&format!("{sub}/{id}.{ext}"))
    }

    fn list_kept(&self, kind: Kept) -> Result<Vec<String>> {
        use futures_util::TryStreamExt;
        let (sub, ext) = kind.place();
        let prefix = self.key(sub);
        let metas: Vec<object_store::ObjectMeta> =
            self.rt.block_on(self.store.list(Some(&prefix)).try_collect()).map_err(|e| self.err(sub, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                full.rsplit('/').next().and_then(|n| n.strip_suffix(ext)?.strip_suffix('.')).map(str::to_string)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://tapes/site-b/vault1").unwrap(),
            Location::S3 { bucket: "tapes".into(), prefix: "site-b/vault1".into() }
        );
        assert_eq!(
            Location::parse("s3://tapes").unwrap(),
            Location::S3 { bucket: "tapes".into(), prefix: String::new() }
        );
        assert_eq!(Location::parse("/srv/tape").unwrap(), Location::Dir("/srv/tape".into()));
        assert!(Location::parse("s3://Bad_Bucket/x").unwrap_err().contains("bucket name"));
        assert!(Location::parse("s3://tapes/../x").is_err());
        assert!(Location::parse("gs://b/x").unwrap_err().contains("only s3://"));
    }

    #[test]
    fn directory_tape_volume_conforms_and_is_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::Dir(dir.path().join("tape"));
        let v = ObjectVolume::create("t1", &loc, &S3Options::default()).unwrap();
        custos_store::conformance::run(&v);
        let ds = DatasetId([7; 16]);
        v.put_manifest(&ds, 9, b"first").unwrap();
        let err = v.put_manifest(&ds, 9, b"second").unwrap_err().to_string();
        assert!(err.contains("written once"), "{err}");
        assert_eq!(v.read_manifest(&ds, 9).unwrap(), b"first");
        // The same directory reads as a disk volume: one layout for both.
        let disk = custos_store::LocalVolume::open("t1", &dir.path().join("tape")).unwrap();
        assert_eq!(disk.read_manifest(&ds, 9).unwrap(), b"first");
        // Re-creating adopts it; opening a directory without a label fails.
        ObjectVolume::create("t1", &loc, &S3Options::default()).unwrap();
        let empty = Location::Dir(dir.path().to_path_buf());
        assert!(matches!(ObjectVolume::open("t2", &empty, &S3Options::default()), Err(StoreError::NotAVolume { .. })));
    }
}
