//! A synchronous mirror (PPRC): every write and delete goes to both volumes
//! and is acknowledged only when both succeeded; reads come from the primary
//! and fail over to the secondary when the primary cannot be reached. Like
//! the real thing, it replicates mistakes too: a deletion deletes on both.

use custos_model::{ChunkId, DatasetId};

use crate::{ChunkBuf, Kept, Placed, Result, StoreError, Volume};

pub struct MirroredVolume {
    primary: Box<dyn Volume>,
    secondary: Box<dyn Volume>,
}

impl MirroredVolume {
    pub fn new(primary: Box<dyn Volume>, secondary: Box<dyn Volume>) -> Self {
        Self { primary, secondary }
    }

    /// Read from the primary; when it is gone, from the secondary.
    fn read<T>(&self, mut f: impl FnMut(&dyn Volume) -> Result<T>) -> Result<T> {
        match f(self.primary.as_ref()) {
            Err(StoreError::Unreachable { .. } | StoreError::NotAVolume { .. }) => f(self.secondary.as_ref()),
            other => other,
        }
    }
}

impl Volume for MirroredVolume {
    fn describe(&self) -> String {
        format!("{} mirrored to {}", self.primary.describe(), self.secondary.describe())
    }

    fn put_chunk(&self, id: &ChunkId, sealed: &[u8]) -> Result<()> {
        self.primary.put_chunk(id, sealed)?;
        if let Err(e) = self.secondary.put_chunk(id, sealed) {
            let _ = self.primary.delete_chunk(id);
            return Err(e);
        }
        Ok(())
    }

    fn read_chunk(&self, id: &ChunkId, buf: &mut ChunkBuf, max_len: usize) -> Result<usize> {
        self.read(|v| v.read_chunk(id, buf, max_len))
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.primary.has_chunk(id)? && self.secondary.has_chunk(id)?)
    }

    /// The primary's size when the secondary holds the same size, else `None`
    /// (an object on one side only is not yet mirrored).
    fn chunk_len(&self, id: &ChunkId) -> Result<Option<u64>> {
        let p = self.primary.chunk_len(id)?;
        Ok(p.filter(|_| self.secondary.chunk_len(id).ok().flatten() == p))
    }

    fn delete_chunk(&self, id: &ChunkId) -> Result<()> {
        self.primary.delete_chunk(id)?;
        self.secondary.delete_chunk(id)
    }

    fn sync(&self) -> Result<()> {
        self.primary.sync()?;
        self.secondary.sync()
    }

    fn put_manifest(&self, dataset: &DatasetId, generation: u64, sealed: &[u8]) -> Result<()> {
        self.primary.put_manifest(dataset, generation, sealed)?;
        self.secondary.put_manifest(dataset, generation, sealed)
    }

    /// Both sides keep it as an object of its own: a mirror makes no packs.
    fn put_manifest_deferred(&self, dataset: &DatasetId, generation: u64, sealed: &[u8]) -> Result<Placed> {
        self.primary.put_manifest_deferred(dataset, generation, sealed)?;
        self.secondary.put_manifest_deferred(dataset, generation, sealed)?;
        Ok(Placed::Own)
    }

    fn read_manifest(&self, dataset: &DatasetId, generation: u64) -> Result<Vec<u8>> {
        self.read(|v| v.read_manifest(dataset, generation))
    }

    fn read_manifest_where(
        &self,
        dataset: &DatasetId,
        generation: u64,
        accept: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>> {
        self.read(|v| v.read_manifest_where(dataset, generation, accept))
    }

    fn delete_manifest(&self, dataset: &DatasetId, generation: u64) -> Result<()> {
        self.primary.delete_manifest(dataset, generation)?;
        self.secondary.delete_manifest(dataset, generation)
    }

    /// The primary's objects: each side is listed on its own by whoever
    /// checks the volumes (they are two volumes in the catalog).
    fn list(&self) -> Result<Vec<crate::Listed>> {
        self.read(|v| v.list())
    }

    fn delete_temp(&self, name: &str) -> Result<()> {
        self.primary.delete_temp(name)
    }

    fn put_keystore_backup(&self, id: &str, bytes: &[u8]) -> Result<()> {
        self.primary.put_keystore_backup(id, bytes)?;
        self.secondary.put_keystore_backup(id, bytes)
    }

    fn read_keystore_backup(&self, id: &str) -> Result<Vec<u8>> {
        self.read(|v| v.read_keystore_backup(id))
    }

    fn put_kept(&self, kind: Kept, id: &str, bytes: &[u8]) -> Result<()> {
        self.primary.put_kept(kind, id, bytes)?;
        self.secondary.put_kept(kind, id, bytes)
    }

    fn read_kept(&self, kind: Kept, id: &str) -> Result<Vec<u8>> {
        self.read(|v| v.read_kept(kind, id))
    }

    fn list_kept(&self, kind: Kept) -> Result<Vec<String>> {
        self.read(|v| v.list_kept(kind))
    }

    fn delete_kept(&self, kind: Kept, id: &str) -> Result<()> {
        self.primary.delete_kept(kind, id)?;
        self.secondary.delete_kept(kind, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalVolume;

    #[test]
    fn conformance_and_failover() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let m = MirroredVolume::new(
            Box::new(LocalVolume::create("a", &a).unwrap()),
            Box::new(LocalVolume::create("b", &b).unwrap()),
        );
        crate::conformance::run(&m);
        let id = ChunkId([7; 16]);
        m.put_chunk(&id, b"both").unwrap();
        m.sync().unwrap();
        let secondary = LocalVolume::open("b", &b).unwrap();
        assert!(secondary.has_chunk(&id).unwrap(), "acknowledged means on the secondary too");
        std::fs::remove_dir_all(&a).unwrap();
        let mut buf = ChunkBuf::new(16);
        let n = m.read_chunk(&id, &mut buf, 1 << 20).unwrap();
        assert_eq!(buf.slice(n), b"both", "reads fail over to the secondary");
        assert!(m.put_chunk(&ChunkId([8; 16]), b"x").is_err(), "no write is acknowledged on one side only");
    }
}
