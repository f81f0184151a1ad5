//! Writing a batch of small chunk objects as one pack (ADR 0030).

use custos_model::{ChunkId, DatasetId};

use crate::pack::PackId;
use crate::{ChunkBuf, Kept, Listed, Placed, Result, Volume};

/// A pack being written: chunk objects go in as they are sealed (from many
/// threads), and [`PackWriter::finish`] puts the pack in place. Dropped
/// unfinished, it leaves nothing on the volume.
pub trait PackWriter: Send + Sync {
    /// A new chunk id inside this pack.
    fn new_id(&self) -> ChunkId;
    /// Whether `id` is one of this pack's ids.
    fn owns(&self, id: &ChunkId) -> bool;
    /// Append a sealed chunk object under an id from [`PackWriter::new_id`].
    fn put(&self, id: &ChunkId, sealed: &[u8]) -> Result<()>;
    /// Leave an object out of the pack's index (its writer gave it up).
    fn forget(&self, id: &ChunkId);
    /// The pack's id.
    fn id(&self) -> PackId;
    /// Append a sealed manifest object (ADR 0035); `false`, with nothing
    /// written, when this pack keeps no manifests (a volume of layout 3).
    fn put_manifest(&self, dataset: &DatasetId, generation: u64, sealed: &[u8]) -> Result<bool>;
    /// Leave a manifest out of the pack's index (its writer gave it up).
    fn forget_manifest(&self, dataset: &DatasetId, generation: u64);
    /// Write the index and put the pack in place under its name; it is
    /// durable once the volume's next sync returns. A pack with nothing
    /// left in it is not put in place.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A volume whose new chunk objects go into one pack; everything else goes
/// to the volume as it is. Stage a batch through it, then
/// [`Packing::finish`] before the volume's sync.
pub struct Packing<'a> {
    volume: &'a dyn Volume,
    pack: Option<Box<dyn PackWriter + 'a>>,
    /// Held shared while an object is moved into the volume (see
    /// [`Packing::gated`]).
    gate: Option<&'a std::sync::RwLock<()>>,
}

impl<'a> Packing<'a> {
    /// Packing on `volume` when it packs; otherwise a plain pass-through.
    pub fn start(volume: &'a dyn Volume) -> Result<Self> {
        Ok(Self { volume, pack: volume.start_pack()?, gate: None })
    }

    /// Move objects into the volume (the pack at [`Packing::finish`],
    /// objects of their own as they come) only while `gate` can be held
    /// shared: a writer that holds it exclusively while it flushes the
    /// volume and commits knows that nothing this packing placed is left
    /// out of its flush.
    pub fn gated(mut self, gate: &'a std::sync::RwLock<()>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn placing(&self) -> Option<std::sync::RwLockReadGuard<'a, ()>> {
        self.gate.map(|g| g.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Put the pack in place (see [`PackWriter::finish`]).
    pub fn finish(self) -> Result<()> {
        let _placing = self.placing();
        match self.pack {
            Some(p) => p.finish(),
            None => Ok(()),
        }
    }

    fn packed(&self, id: &ChunkId) -> Option<&dyn PackWriter> {
        self.pack.as_deref().filter(|p| p.owns(id))
    }
}

impl Volume for Packing<'_> {
    fn describe(&self) -> String {
        self.volume.describe()
    }
    fn new_chunk_id(&self) -> ChunkId {
        match &self.pack {
            Some(p) => p.new_id(),
            None => self.volume.new_chunk_id(),
        }
    }
    fn put_chunk(&self, id: &ChunkId, sealed: &[u8]) -> Result<()> {
        match self.packed(id) {
            Some(p) => p.put(id, sealed),
            None => {
                let _placing = self.placing();
                self.volume.put_chunk(id, sealed)
            }
        }
    }
    fn read_chunk(&self, id: &ChunkId, buf: &mut ChunkBuf, max_len: usize) -> Result<usize> {
        self.volume.read_chunk(id, buf, max_len)
    }
    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.volume.has_chunk(id)
    }
    fn chunk_len(&self, id: &ChunkId) -> Result<Option<u64>> {
        self.volume.chunk_len(id)
    }
    fn delete_chunk(&self, id: &ChunkId) -> Result<()> {
        match self.packed(id) {
            Some(p) => {
                p.forget(id);
                Ok(())
            }
            None => self.volume.delete_chunk(id),
        }
    }
    fn sync(&self) -> Result<()> {
        self.volume.sync()
    }
    fn put_manifest(&self, dataset: &DatasetId, generation: u64, sealed: &[u8]) -> Result<()> {
        let _placing = self.placing();
        self.volume.put_manifest(dataset, generation, sealed)
    }
    fn put_manifest_deferred(&self, dataset: &DatasetId, generation: u64, sealed: &[u8]) -> Result<Placed> {
        let _placing = self.placing();
        self.volume.put_manifest_deferred(dataset, generation, sealed)
    }
    fn put_manifest_beside(
        &self,
        dataset: &DatasetId,
        generation: u64,
        sealed: &[u8],
        anchor: &ChunkId,
    ) -> Result<Placed> {
        if let Some(p) = self.packed(anchor) {
            if p.put_manifest(dataset, generation, sealed)? {
                return Ok(Placed::Pack(p.id()));
            }
        }
        let _placing = self.placing();
        self.volume.put_manifest_deferred(dataset, generation, sealed)
    }
    fn read_manifest(&self, dataset: &DatasetId, generation: u64) -> Result<Vec<u8>> {
        self.volume.read_manifest(dataset, generation)
    }
    fn read_manifest_where(
        &self,
        dataset: &DatasetId,
        generation: u64,
        accept: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>> {
        self.volume.read_manifest_where(dataset, generation, accept)
    }
    fn delete_manifest(&self, dataset: &DatasetId, generation: u64) -> Result<()> {
        self.volume.delete_manifest(dataset, generation)
    }
    fn delete_placed_manifest(&self, dataset: &DatasetId, generation: u64, placed: Placed) -> Result<()> {
        match (&self.pack, placed) {
            (Some(p), Placed::Pack(id)) if p.id() == id => {
                p.forget_manifest(dataset, generation);
                Ok(())
            }
            _ => self.volume.delete_placed_manifest(dataset, generation, placed),
        }
    }
    fn list(&self) -> Result<Vec<Listed>> {
        self.volume.list()
    }
    fn delete_temp(&self, name: &str) -> Result<()> {
        self.volume.delete_temp(name)
    }
    fn put_keystore_backup(&self, id: &str, bytes: &[u8]) -> Result<()> {
        self.volume.put_keystore_backup(id, bytes)
    }
    fn read_keystore_backup(&self, id: &str) -> Result<Vec<u8>> {
        self.volume.read_keystore_backup(id)
    }
    fn put_kept(&self, kind: Kept, id: &str, bytes: &[u8]) -> Result<()> {
        self.volume.put_kept(kind, id, bytes)
    }
    fn read_kept(&self, kind: Kept, id: &str) -> Result<Vec<u8>> {
        self.volume.read_kept(kind, id)
    }
    fn list_kept(&self, kind: Kept) -> Result<Vec<String>> {
        self.volume.list_kept(kind)
    }
    fn delete_kept(&self, kind: Kept, id: &str) -> Result<()> {
        self.volume.delete_kept(kind, id)
    }
}
