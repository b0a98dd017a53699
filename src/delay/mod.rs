//! A hashed timer wheel that holds items (processed packets) until their send time.
//!
//! Time is split into ticks (1 ms by default) and each tick hashes to one of a fixed number of
//! slots; an item due more than one revolution ahead simply waits in its slot for later rounds
//! (each entry keeps its absolute tick). Entries live in a slab allocated at construction and
//! recycled through a free list, so insertion never allocates, and the wheel refuses items
//! past its capacity instead of growing.
//!
//! [`DelayWheel::pop_due`] yields exactly the items whose due time is at or before `now`:
//! never early, and, within one call, in due order (ties in insertion order).
//!
//! What it deliberately does not do: read a clock (`now` is an argument), cap delays (the hop
//! step drops delays over its cap before they get here), or sleep; [`DelayWheel::next_due`]
//! tells the driver how long it may sleep.

use std::time::{Duration, Instant};

/// Default tick: the resolution of delays.
pub const TICK_DEFAULT: Duration = Duration::from_millis(1);
/// Default slot count: one revolution (16.4 s at 1 ms) covers the default 10 s delay cap, so
/// no item waits for a second round.
pub const SLOT_COUNT_DEFAULT: usize = 16_384;
/// Default number of items the wheel holds.
pub const CAPACITY_DEFAULT: usize = 65_536;
/// The largest slot count accepted.
pub const SLOT_COUNT_MAX: usize = 1 << 22;
/// The largest capacity accepted (entry indices are `u32`, one value reserved).
pub const CAPACITY_MAX: usize = (u32::MAX - 1) as usize;

const NIL: u32 = u32::MAX;

/// Sizes of a [`DelayWheel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WheelConfig {
    /// Length of one tick.
    pub tick: Duration,
    /// Number of slots in one revolution.
    pub slot_count: usize,
    /// Most items held at once.
    pub capacity: usize,
}

impl Default for WheelConfig {
    fn default() -> Self {
        WheelConfig {
            tick: TICK_DEFAULT,
            slot_count: SLOT_COUNT_DEFAULT,
            capacity: CAPACITY_DEFAULT,
        }
    }
}

/// Why a [`WheelConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WheelConfigError {
    /// The tick was zero.
    #[error("delay wheel tick must be longer than zero")]
    ZeroTick,
    /// The slot count was zero or above [`SLOT_COUNT_MAX`].
    #[error("delay wheel slot_count {0} must be between 1 and {SLOT_COUNT_MAX}")]
    SlotCount(usize),
    /// The capacity was zero or above [`CAPACITY_MAX`].
    #[error("delay wheel capacity {0} must be between 1 and {CAPACITY_MAX}")]
    Capacity(usize),
}

struct Entry<T> {
    item: Option<T>,
    due: Instant,
    due_tick: u64,
    seq: u64,
    next: u32,
}

/// A bounded timer wheel of items of type `T`.
pub struct DelayWheel<T> {
    origin: Instant,
    tick_nanos: u128,
    heads: Box<[u32]>,
    entries: Vec<Entry<T>>,
    free_head: u32,
    len: usize,
    capacity: usize,
    /// Ticks before this one are fully emptied; this one may hold items not yet due.
    cursor_tick: u64,
    next_seq: u64,
    /// Due items of one `pop_due` call, sorted before they are yielded.
    scratch: Vec<(Instant, u64, u32)>,
}

impl<T> DelayWheel<T> {
    /// An empty wheel whose tick 0 starts at `now`, with all storage allocated.
    pub fn new(config: WheelConfig, now: Instant) -> Result<Self, WheelConfigError> {
        if config.tick.is_zero() {
            return Err(WheelConfigError::ZeroTick);
        }
        if config.slot_count == 0 || config.slot_count > SLOT_COUNT_MAX {
            return Err(WheelConfigError::SlotCount(config.slot_count));
        }
        if config.capacity == 0 || config.capacity > CAPACITY_MAX {
            return Err(WheelConfigError::Capacity(config.capacity));
        }
        Ok(DelayWheel {
            origin: now,
            tick_nanos: config.tick.as_nanos(),
            heads: vec![NIL; config.slot_count].into_boxed_slice(),
            entries: Vec::with_capacity(config.capacity),
            free_head: NIL,
            len: 0,
            capacity: config.capacity,
            cursor_tick: 0,
            next_seq: 0,
            scratch: Vec::with_capacity(config.capacity),
        })
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most items held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Holds `item` until `due`, or hands it back if the wheel is full. A `due` in the past
    /// makes the item due at the next [`Self::pop_due`].
    pub fn insert(&mut self, due: Instant, item: T) -> Result<(), T> {
        if self.len == self.capacity {
            return Err(item);
        }
        let due_tick = self.tick_of(due).max(self.cursor_tick);
        let slot = self.slot_of(due_tick);
        let entry = Entry {
            item: Some(item),
            due,
            due_tick,
            seq: self.next_seq,
            next: self.heads[slot],
        };
        self.next_seq += 1;
        let index = if self.free_head != NIL {
            let index = self.free_head;
            self.free_head = self.entries[index as usize].next;
            assert!(self.entries[index as usize].item.is_none());
            self.entries[index as usize] = entry;
            index
        } else {
            // Within the capacity reserved at construction: no reallocation.
            assert!(self.entries.len() < self.capacity);
            self.entries.push(entry);
            (self.entries.len() - 1) as u32
        };
        self.heads[slot] = index;
        self.len += 1;
        Ok(())
    }

    /// Yields every item due at or before `now`, in due order, and none due later.
    pub fn pop_due(&mut self, now: Instant, yield_item: &mut impl FnMut(T)) {
        let now_tick = self.tick_of(now).max(self.cursor_tick);
        if self.len == 0 {
            self.cursor_tick = now_tick;
            return;
        }
        let slot_count = self.heads.len() as u64;
        if now_tick - self.cursor_tick >= slot_count {
            // Idle for a revolution or more: every slot is visited once, whatever its ticks.
            for slot in 0..self.heads.len() {
                self.gather(slot, |entry| entry.due <= now);
            }
        } else {
            // Ticks before `now_tick` are wholly in the past: everything in them is due.
            for tick in self.cursor_tick..now_tick {
                let slot = self.slot_of(tick);
                self.gather(slot, |entry| entry.due_tick == tick);
            }
            let slot = self.slot_of(now_tick);
            self.gather(slot, |entry| entry.due_tick == now_tick && entry.due <= now);
        }
        self.cursor_tick = now_tick;
        self.emit_gathered(Some(now), yield_item);
    }

    /// The earliest due time held, so the driver knows how long it may sleep. Costs up to one
    /// pass over the slots, plus one over the items if all are more than a revolution away.
    pub fn next_due(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let slot_count = self.heads.len() as u64;
        for tick in self.cursor_tick..self.cursor_tick + slot_count {
            let earliest = self
                .slot_entries(self.slot_of(tick))
                .filter(|entry| entry.due_tick == tick)
                .map(|entry| entry.due)
                .min();
            if earliest.is_some() {
                return earliest;
            }
        }
        (0..self.heads.len())
            .flat_map(|slot| self.slot_entries(slot))
            .map(|entry| entry.due)
            .min()
    }

    /// Yields every item held, in due order, emptying the wheel (for shutdown).
    pub fn drain_all(&mut self, yield_item: &mut impl FnMut(T)) {
        for slot in 0..self.heads.len() {
            self.gather(slot, |_| true);
        }
        self.emit_gathered(None, yield_item);
        assert_eq!(self.len, 0);
    }

    fn tick_of(&self, instant: Instant) -> u64 {
        let ticks = instant.saturating_duration_since(self.origin).as_nanos() / self.tick_nanos;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick % self.heads.len() as u64) as usize
    }

    fn slot_entries(&self, slot: usize) -> impl Iterator<Item = &Entry<T>> + '_ {
        let mut index = self.heads[slot];
        std::iter::from_fn(move || {
            if index == NIL {
                return None;
            }
            let entry = &self.entries[index as usize];
            index = entry.next;
            Some(entry)
        })
    }

    /// Unlinks the entries of `slot` that `take` selects and notes them in `scratch`.
    fn gather(&mut self, slot: usize, take: impl Fn(&Entry<T>) -> bool) {
        let mut previous = NIL;
        let mut index = self.heads[slot];
        while index != NIL {
            let entry = &self.entries[index as usize];
            let next = entry.next;
            if take(entry) {
                assert!(self.scratch.len() < self.capacity);
                self.scratch.push((entry.due, entry.seq, index));
                if previous == NIL {
                    self.heads[slot] = next;
                } else {
                    self.entries[previous as usize].next = next;
                }
            } else {
                previous = index;
            }
            index = next;
        }
    }

    /// Sorts the gathered entries by due time, frees them and yields their items.
    fn emit_gathered(&mut self, now: Option<Instant>, yield_item: &mut impl FnMut(T)) {
        let mut gathered = std::mem::take(&mut self.scratch);
        gathered.sort_unstable_by_key(|&(due, seq, _)| (due, seq));
        for &(due, _, index) in &gathered {
            if let Some(now) = now {
                assert!(due <= now, "delay wheel would yield an item early");
            }
            let entry = &mut self.entries[index as usize];
            let item = entry.item.take();
            entry.next = self.free_head;
            self.free_head = index;
            self.len -= 1;
            if let Some(item) = item {
                yield_item(item);
            }
        }
        gathered.clear();
        self.scratch = gathered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    fn wheel(slot_count: usize, capacity: usize, origin: Instant) -> DelayWheel<u64> {
        DelayWheel::new(
            WheelConfig {
                tick: Duration::from_millis(1),
                slot_count,
                capacity,
            },
            origin,
        )
        .expect("valid config")
    }

    #[test]
    fn bad_configs_are_refused() {
        let now = Instant::now();
        let ok = WheelConfig::default();
        let zero_tick = WheelConfig {
            tick: Duration::ZERO,
            ..ok
        };
        assert_eq!(
            DelayWheel::<u8>::new(zero_tick, now).err(),
            Some(WheelConfigError::ZeroTick)
        );
        let no_slots = WheelConfig {
            slot_count: 0,
            ..ok
        };
        assert_eq!(
            DelayWheel::<u8>::new(no_slots, now).err(),
            Some(WheelConfigError::SlotCount(0))
        );
        let no_room = WheelConfig { capacity: 0, ..ok };
        assert_eq!(
            DelayWheel::<u8>::new(no_room, now).err(),
            Some(WheelConfigError::Capacity(0))
        );
    }

    #[test]
    fn items_come_out_at_their_time_in_due_order() {
        let origin = Instant::now();
        let mut wheel = wheel(8, 16, origin);
        let at = |micros: u64| origin + Duration::from_micros(micros);
        // 2500 µs and 2100 µs share tick 2; 20_000 µs is more than a revolution (8 ms) ahead.
        for (due, id) in [(2500, 1), (2100, 2), (20_000, 3), (700, 4), (2100, 5)] {
            wheel.insert(at(due), id).expect("room");
        }
        assert_eq!(wheel.next_due(), Some(at(700)));
        let mut out = Vec::new();
        wheel.pop_due(at(699), &mut |id| out.push(id));
        assert!(out.is_empty());
        wheel.pop_due(at(2200), &mut |id| out.push(id));
        assert_eq!(out, [4, 2, 5]);
        assert_eq!(wheel.next_due(), Some(at(2500)));
        wheel.pop_due(at(19_999), &mut |id| out.push(id));
        assert_eq!(out, [4, 2, 5, 1]);
        assert_eq!(wheel.next_due(), Some(at(20_000)));
        wheel.pop_due(at(20_000), &mut |id| out.push(id));
        assert_eq!(out, [4, 2, 5, 1, 3]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_due(), None);
    }

    #[test]
    fn a_full_wheel_hands_the_item_back_and_reuses_freed_entries() {
        let origin = Instant::now();
        let mut wheel = wheel(4, 3, origin);
        for id in 0..3 {
            wheel.insert(origin, id).expect("room");
        }
        assert_eq!(wheel.insert(origin, 99), Err(99));
        let entries_address = wheel.entries.as_ptr();
        let mut out = Vec::new();
        wheel.pop_due(origin, &mut |id| out.push(id));
        assert_eq!(out, [0, 1, 2]);
        for id in 10..13 {
            wheel
                .insert(origin + Duration::from_millis(id), id)
                .expect("room");
        }
        assert_eq!(wheel.entries.as_ptr(), entries_address);
        assert_eq!(wheel.entries.len(), 3);
        out.clear();
        wheel.drain_all(&mut |id| out.push(id));
        assert_eq!(out, [10, 11, 12]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn items_due_in_the_past_come_out_at_the_next_pop() {
        let origin = Instant::now();
        let mut wheel = wheel(16, 16, origin);
        let mut out = Vec::new();
        wheel.pop_due(origin + Duration::from_millis(50), &mut |id| out.push(id));
        wheel
            .insert(origin + Duration::from_millis(3), 7)
            .expect("room");
        assert_eq!(wheel.next_due(), Some(origin + Duration::from_millis(3)));
        wheel.pop_due(origin + Duration::from_millis(50), &mut |id| out.push(id));
        assert_eq!(out, [7]);
    }

    /// Random inserts and pops against a plain list: nothing early, nothing late, due order.
    #[test]
    fn random_schedule_matches_a_reference_model() {
        let mut rng = SplitMix64::new(crate::testing::seed());
        let origin = Instant::now();
        let mut wheel = wheel(64, 512, origin);
        let mut model: Vec<(Instant, u64)> = Vec::new();
        let mut now = origin;
        let mut next_id = 0u64;
        for _ in 0..20_000 {
            if rng.chance(3, 5) {
                // Up to ~3 revolutions ahead, with sub-tick precision.
                let due = now + Duration::from_micros(rng.below(200_000));
                match wheel.insert(due, next_id) {
                    Ok(()) => model.push((due, next_id)),
                    Err(id) => {
                        assert_eq!(id, next_id);
                        assert_eq!(model.len(), 512);
                    }
                }
                next_id += 1;
            } else {
                let step_max_micros = if rng.chance(1, 50) { 300_000 } else { 3000 };
                now += Duration::from_micros(rng.below(step_max_micros));
                let mut popped = Vec::new();
                wheel.pop_due(now, &mut |id| popped.push(id));
                model.sort_by_key(|&(due, id)| (due, id));
                let due_count = model.iter().take_while(|&&(due, _)| due <= now).count();
                let expected: Vec<u64> = model.drain(..due_count).map(|(_, id)| id).collect();
                assert_eq!(popped, expected);
            }
            assert_eq!(wheel.len(), model.len());
            assert_eq!(wheel.next_due(), model.iter().map(|&(due, _)| due).min());
        }
    }
}
