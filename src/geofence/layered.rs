//! A fence set that takes one fence at a time: adding, replacing or deleting a fence costs work
//! proportional to the fences changed since the last compaction, not a rebuild of the whole set.
//!
//! Like an LSM tree: a large immutable **base** [`FenceIndex`] (shared between snapshots through an `Arc`),
//! a bit set of base fences that were replaced or deleted, and a small **overlay** index holding every fence
//! added or replaced since the base was built, rebuilt on each change. A snapshot is immutable, so behind an
//! `ArcSwap` a reader sees the old set or the new one, never a mix, and never waits for a writer.
//!
//! When the overlay has grown past [`LayeredIndex::wants_compaction`], the owner builds a fresh base from the
//! live fences ([`LayeredIndex::compacted`], on a background thread) and re-applies whatever changed while it
//! ran ([`LayeredIndex::apply`] on the result).
//!
//! Positions: base fences keep their build positions `0..base_len`; overlay fences follow. A position names
//! one fence within one snapshot; ids are what stay stable across snapshots.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::fence::Fence;
use super::index::{FenceIndex, FenceInfo, FenceMatch, IndexOptions, IndexStats, Strategy};
use super::point::GeoPoint;

/// One change to a fence set.
#[derive(Debug, Clone, PartialEq)]
pub enum FenceChange {
    /// Adds the fence, or replaces the fence with the same id.
    Upsert(Fence),
    /// Removes the fence with this id (nothing when there is none).
    Delete(String),
}

/// The overlay is folded into a new base once it holds this many fences…
const COMPACT_AFTER_FENCES: usize = 512;
/// …or this many vertices: past either, rebuilding it on every change costs more than a few milliseconds.
const COMPACT_AFTER_VERTICES: usize = 100_000;

#[derive(Debug)]
struct Base {
    index: FenceIndex,
    fences: Vec<Fence>,
    positions: FxHashMap<Arc<str>, u32>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct LayeredIndex {
    options: IndexOptions,
    base: Arc<Base>,
    /// Bit per base position: replaced or deleted since the base was built.
    removed: Vec<u64>,
    removed_count: usize,
    overlay_fences: Vec<Fence>,
    overlay: FenceIndex,
    /// Id → position among the overlay's fences (the rules look fences up by id on every exit).
    overlay_positions: FxHashMap<Arc<str>, u32>,
}

/// Id → position in `index`, the first fence with an id winning.
fn positions_of(index: &FenceIndex) -> FxHashMap<Arc<str>, u32> {
    let mut positions = FxHashMap::default();
    positions.reserve(index.fences().len());
    for (i, info) in index.fences().iter().enumerate() {
        positions.entry(info.id.clone()).or_insert(i as u32);
    }
    positions
}

impl LayeredIndex {
    /// Builds a base holding `fences` (on all cores) and an empty overlay.
    #[must_use]
    pub fn build(fences: Vec<Fence>, options: IndexOptions) -> Self {
        let index = FenceIndex::build(&fences, options);
        let positions = positions_of(&index);
        let overlay = FenceIndex::build(&[], options);
        Self {
            options,
            removed: vec![0; fences.len().div_ceil(64)],
            removed_count: 0,
            base: Arc::new(Base {
                index,
                fences,
                positions,
            }),
            overlay_fences: Vec::new(),
            overlay_positions: positions_of(&overlay),
            overlay,
        }
    }

    /// A new snapshot with `changes` applied in order; `self` stays as it was for its readers. Costs the
    /// overlay's rebuild (the changed fences since the last compaction) plus a copy of the base's bit set.
    #[must_use]
    pub fn apply(&self, changes: impl IntoIterator<Item = FenceChange>) -> Self {
        let mut removed = self.removed.clone();
        let mut removed_count = self.removed_count;
        let mut overlay_fences = self.overlay_fences.clone();
        let mut remove_from_base = |id: &str| {
            if let Some(&p) = self.base.positions.get(id) {
                let (word, bit) = (p as usize / 64, 1u64 << (p % 64));
                if removed[word] & bit == 0 {
                    removed[word] |= bit;
                    removed_count += 1;
                }
            }
        };
        for change in changes {
            match change {
                FenceChange::Upsert(fence) => {
                    remove_from_base(&fence.id);
                    match overlay_fences.iter_mut().find(|f| f.id == fence.id) {
                        Some(existing) => *existing = fence,
                        None => overlay_fences.push(fence),
                    }
                }
                FenceChange::Delete(id) => {
                    remove_from_base(&id);
                    overlay_fences.retain(|f| f.id != id);
                }
            }
        }
        let overlay = FenceIndex::build(&overlay_fences, self.options);
        Self {
            options: self.options,
            base: Arc::clone(&self.base),
            removed,
            removed_count,
            overlay_fences,
            overlay_positions: positions_of(&overlay),
            overlay,
        }
    }

    /// The same live fences in a fresh base with an empty overlay: a full build, meant for a background
    /// thread. Base fences keep their order, overlay fences follow.
    #[must_use]
    pub fn compacted(&self) -> Self {
        Self::build(self.live_fences().cloned().collect(), self.options)
    }

    /// Whether the overlay has grown enough that changes would be cheaper after [`Self::compacted`].
    #[must_use]
    pub fn wants_compaction(&self) -> bool {
        let (fences, vertices) = self.overlay_size();
        fences >= COMPACT_AFTER_FENCES || vertices >= COMPACT_AFTER_VERTICES
    }

    /// Fences and vertices in the overlay.
    #[must_use]
    pub fn overlay_size(&self) -> (usize, usize) {
        (self.overlay_fences.len(), self.overlay.stats().vertices)
    }

    /// Live fences: base fences not replaced or deleted, in base order, then the overlay's.
    pub fn live_fences(&self) -> impl Iterator<Item = &Fence> + '_ {
        self.base
            .fences
            .iter()
            .enumerate()
            .filter(|&(p, _)| !self.is_removed(p as u32))
            .map(|(_, f)| f)
            .chain(self.overlay_fences.iter())
    }

    /// Number of live fences.
    #[must_use]
    pub fn len(&self) -> usize {
        self.base.fences.len() - self.removed_count + self.overlay_fences.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live fence at `position`, if that position holds one.
    #[must_use]
    pub fn get(&self, position: u32) -> Option<&FenceInfo> {
        let base_len = self.base.fences.len() as u32;
        if position < base_len {
            (!self.is_removed(position)).then(|| self.base.index.fence(position))
        } else {
            self.overlay.fences().get((position - base_len) as usize)
        }
    }

    /// The fence at `position` (as returned in a [`FenceMatch`] of this snapshot).
    ///
    /// # Panics
    /// When no live fence has that position.
    #[must_use]
    pub fn fence(&self, position: u32) -> &FenceInfo {
        self.get(position)
            .unwrap_or_else(|| panic!("no live fence at position {position}"))
    }

    /// The position of the live fence with this id.
    #[must_use]
    pub fn position(&self, id: &str) -> Option<u32> {
        if let Some(&i) = self.overlay_positions.get(id) {
            return Some(self.base.fences.len() as u32 + i);
        }
        let &p = self.base.positions.get(id)?;
        (!self.is_removed(p)).then_some(p)
    }

    /// Sizes and build time of the base.
    #[must_use]
    pub fn base_stats(&self) -> &IndexStats {
        self.base.index.stats()
    }

    /// Every live fence `point` is inside or within reach of, ordered by position; `out` is cleared first.
    pub fn match_point(&self, point: GeoPoint, out: &mut Vec<FenceMatch>) {
        self.match_with(Strategy::Raster, point, out);
    }

    /// [`Self::match_point`] through the chosen lookup path (the overlay always uses the same one).
    pub fn match_with(&self, strategy: Strategy, point: GeoPoint, out: &mut Vec<FenceMatch>) {
        out.clear();
        self.base.index.collect(strategy, point, out, 0);
        self.finish(out, |overlay, out, offset| {
            overlay.collect(strategy, point, out, offset);
        });
    }

    /// The reference answer: every live fence tested.
    pub fn match_point_brute_force(&self, point: GeoPoint, out: &mut Vec<FenceMatch>) {
        out.clear();
        self.base.index.collect_brute_force(point, out, 0);
        self.finish(out, |overlay, out, offset| {
            overlay.collect_brute_force(point, out, offset);
        });
    }

    /// Drops removed base fences from the base's matches and appends the overlay's.
    fn finish(
        &self,
        out: &mut Vec<FenceMatch>,
        overlay: impl FnOnce(&FenceIndex, &mut Vec<FenceMatch>, u32),
    ) {
        if self.removed_count > 0 {
            out.retain(|m| !self.is_removed(m.fence));
        }
        if !self.overlay_fences.is_empty() {
            overlay(&self.overlay, out, self.base.fences.len() as u32);
        }
    }

    fn is_removed(&self, base_position: u32) -> bool {
        let p = base_position as usize;
        self.removed
            .get(p / 64)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geofence::fence::Polygon;

    fn square(id: &str, lon: f64, lat: f64, side: f64) -> Fence {
        Fence {
            id: id.into(),
            name: format!("square {id}"),
            tolerance_m: 500.0,
            polygons: vec![Polygon {
                rings: vec![vec![
                    [lon, lat],
                    [lon + side, lat],
                    [lon + side, lat + side],
                    [lon, lat + side],
                    [lon, lat],
                ]],
            }],
            circle: None,
        }
    }

    fn ids(index: &LayeredIndex, lat: f64, lon: f64) -> Vec<String> {
        let mut out = Vec::new();
        index.match_point(GeoPoint::new(lat, lon).unwrap(), &mut out);
        out.iter()
            .map(|m| index.fence(m.fence).id.to_string())
            .collect()
    }

    #[test]
    fn changes_show_in_the_new_snapshot_only() {
        let first = LayeredIndex::build(
            vec![square("a", 0.0, 0.0, 1.0), square("b", 2.0, 0.0, 1.0)],
            IndexOptions::default(),
        );
        let second = first.apply([
            FenceChange::Upsert(square("a", 10.0, 10.0, 1.0)),
            FenceChange::Delete("b".into()),
            FenceChange::Upsert(square("c", 2.0, 0.0, 1.0)),
        ]);
        assert_eq!(ids(&first, 0.5, 0.5), ["a"]);
        assert_eq!(ids(&first, 0.5, 2.5), ["b"]);
        assert!(ids(&second, 0.5, 0.5).is_empty());
        assert_eq!(ids(&second, 10.5, 10.5), ["a"]);
        assert_eq!(ids(&second, 0.5, 2.5), ["c"]);
        assert_eq!(second.len(), 2);
        assert_eq!(second.position("b"), None);
        assert_eq!(second.get(1), None, "b's base position is gone");

        let third = second.apply([FenceChange::Delete("a".into())]);
        assert!(ids(&third, 10.5, 10.5).is_empty());
        let compacted = third.compacted();
        assert_eq!(compacted.overlay_size(), (0, 0));
        assert_eq!(ids(&compacted, 0.5, 2.5), ["c"]);
        assert_eq!(compacted.len(), 1);
    }

    #[test]
    fn the_overlay_asks_for_compaction_when_it_grows() {
        let mut index = LayeredIndex::build(Vec::new(), IndexOptions::default());
        let batch: Vec<FenceChange> = (0..COMPACT_AFTER_FENCES)
            .map(|i| {
                FenceChange::Upsert(square(
                    &i.to_string(),
                    (i % 100) as f64,
                    (i / 100) as f64,
                    0.1,
                ))
            })
            .collect();
        assert!(!index.wants_compaction());
        index = index.apply(batch);
        assert!(index.wants_compaction());
        assert!(!index.compacted().wants_compaction());
    }
}
