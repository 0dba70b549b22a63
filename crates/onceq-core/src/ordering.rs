//! Ordered delivery per key: a queue's ordering mode, a key's partition, and how a consumer
//! group's partitions are shared among its members (docs/design.md, Invariants 9 to 11).
//!
//! # The partition of a key
//!
//! A job's partition in a `per_key` queue of `P` partitions is `fnv1a32(key) mod P`, where
//! `fnv1a32` is the 32-bit FNV-1a hash of the key's UTF-8 bytes: start from `0x811c9dc5`; for each
//! byte, XOR it in, then multiply by `0x01000193` modulo 2^32. A job without a key has partition
//! `id mod P`, so key-less jobs spread over all partitions. The hash is spelt out in docs/api.md so
//! that a client in any language can compute it; [`fnv1a32`]'s tests pin it to fixed vectors.
//!
//! It is written here rather than taken from a crate: it is five lines, and what matters is that
//! it is exactly this function forever (a hasher crate may change its output between versions, or
//! add bytes, as `std::hash::Hash` for `str` does).
//!
//! # Assignment
//!
//! [`assign`] is the group coordinator's one decision: given the partitions each member holds
//! and the members there are now, who should hold what. It is **balanced** (each member holds
//! ⌊P/M⌋ or ⌈P/M⌉ partitions) and **sticky** (it moves the fewest partitions that restore balance,
//! Invariant 11). The cooperative part, moving a partition only once its old owner holds no live
//! lease in it (Invariant 10), is the stores': they hand over what `assign` decided.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, JobId, Result};

/// How a queue orders its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Ordering {
    /// No order between jobs beyond priority, `run_at` and enqueue order at lease time.
    #[default]
    None,
    /// Jobs of one ordering key run one at a time, in enqueue order (Invariant 9).
    PerKey,
}

impl Ordering {
    /// The wire name (`none`, `per_key`).
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::PerKey => "per_key",
        }
    }
}

impl FromStr for Ordering {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Ordering::None),
            "per_key" => Ok(Ordering::PerKey),
            other => Err(Error::invalid(format!("unknown ordering {other:?}; use none or per_key"))),
        }
    }
}

/// The 32-bit FNV-1a hash of `bytes` (see the module docs).
pub const fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

/// The partition of a job with this key (or, without one, this id) in a queue of `partitions`
/// partitions (at least 1).
pub fn partition_of(key: Option<&str>, id: JobId, partitions: u32) -> u32 {
    let partitions = partitions.max(1);
    match key {
        Some(key) => fnv1a32(key.as_bytes()) % partitions,
        // The remainder is below `partitions`, a u32.
        None => u32::try_from(id.get() % u64::from(partitions)).unwrap_or(0),
    }
}

/// Who holds which partitions: member id → its partitions, ascending.
pub type Assignment = BTreeMap<String, Vec<u32>>;

/// The balanced, sticky assignment of partitions `0..partitions` to `members`, given what each
/// member held before (`previous`; members not in `members` are gone, partitions out of range or
/// held twice are ignored).
///
/// Each member's quota is ⌊P/M⌋, and the P mod M members that kept the most get one more. Each
/// member keeps as many of its partitions as its quota allows (its lowest-numbered ones); the
/// rest, with every partition nobody kept, go to the members under quota, lowest partition to
/// the first member (by id) with room. That keeps the most partitions where they were that any
/// balanced assignment can, so it moves the fewest (Invariant 11).
pub fn assign(partitions: u32, previous: &Assignment, members: &BTreeSet<String>) -> Assignment {
    let mut out: Assignment = members.iter().map(|m| (m.clone(), Vec::new())).collect();
    if members.is_empty() {
        return out;
    }
    // What each present member may keep: its partitions in range, each counted once.
    let mut claimed = BTreeSet::new();
    let mut kept: BTreeMap<&String, Vec<u32>> = BTreeMap::new();
    for member in members {
        let mut mine: Vec<u32> = previous.get(member).cloned().unwrap_or_default();
        mine.sort_unstable();
        mine.retain(|&p| p < partitions && claimed.insert(p));
        kept.insert(member, mine);
    }
    let count = u32::try_from(members.len()).unwrap_or(u32::MAX);
    let (base, extra) = (partitions / count, partitions % count);
    // The members that held the most get the larger quota, so the most stay put.
    let mut by_kept: Vec<&String> = members.iter().collect();
    by_kept.sort_by(|a, b| kept[b].len().cmp(&kept[a].len()).then_with(|| a.cmp(b)));
    let quota: BTreeMap<&String, usize> = by_kept
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, (base + u32::from(u32::try_from(i).unwrap_or(u32::MAX) < extra)) as usize))
        .collect();
    let mut owned = BTreeSet::new();
    for member in members {
        let mine = &kept[member];
        let keep = &mine[..mine.len().min(quota[member])];
        owned.extend(keep.iter().copied());
        out.insert(member.clone(), keep.to_vec());
    }
    let mut free = (0..partitions).filter(|p| !owned.contains(p));
    for (member, held) in out.iter_mut() {
        while held.len() < quota[member] {
            match free.next() {
                Some(p) => held.push(p),
                None => break,
            }
        }
        held.sort_unstable();
    }
    out
}

/// How many partitions changed owner from `before` to `after`, counting only partitions whose
/// old owner is still a member in `after` or that had an owner at all (a partition of a departed
/// member counts as moved: somebody must take it).
pub fn moved(before: &Assignment, after: &Assignment) -> usize {
    let owner = |a: &Assignment| -> BTreeMap<u32, String> {
        a.iter().flat_map(|(m, ps)| ps.iter().map(move |p| (*p, m.clone()))).collect()
    };
    let (old, new) = (owner(before), owner(after));
    old.iter().filter(|(p, m)| new.get(p) != Some(m)).count()
}

/// The fewest partitions any balanced assignment of `0..partitions` to `members` must move,
/// starting from `previous` (Invariant 11's minimum, which [`assign`] reaches): each partition
/// owned before that cannot stay with its owner, because the owner is gone or holds more than
/// its quota, moves. The most that can stay comes from giving the P mod M larger quotas to the
/// members that hold the most.
pub fn fewest_moves(partitions: u32, previous: &Assignment, members: &BTreeSet<String>) -> usize {
    let owned_before: usize = previous.values().map(Vec::len).sum();
    if members.is_empty() {
        return owned_before;
    }
    let mut claimed = BTreeSet::new();
    let mut kept: Vec<usize> = members
        .iter()
        .map(|m| {
            let mut mine = previous.get(m).cloned().unwrap_or_default();
            mine.sort_unstable();
            mine.retain(|&p| p < partitions && claimed.insert(p));
            mine.len()
        })
        .collect();
    kept.sort_unstable_by(|a, b| b.cmp(a));
    let (base, extra) = ((partitions as usize) / kept.len(), (partitions as usize) % kept.len());
    let stay: usize = kept.iter().enumerate().map(|(i, k)| (*k).min(base + usize::from(i < extra))).sum();
    owned_before - stay.min(owned_before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv1a32_matches_the_published_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn partitions_of_keys_and_of_keyless_jobs() {
        // The vectors docs/api.md prints.
        assert_eq!(partition_of(Some("account-42"), JobId::new(1), 16), fnv1a32(b"account-42") % 16);
        assert_eq!(partition_of(Some("foobar"), JobId::new(1), 16), 0xbf9c_f968 % 16);
        assert_eq!(partition_of(Some("foobar"), JobId::new(1), 16), 8);
        assert_eq!(partition_of(Some("a"), JobId::new(1), 64), 44);
        assert_eq!(partition_of(Some("é"), JobId::new(1), 256), fnv1a32("é".as_bytes()) % 256);
        assert_eq!(partition_of(None, JobId::new(37), 16), 5);
        assert_eq!(partition_of(Some("x"), JobId::new(1), 1), 0);
    }

    fn set(members: &[&str]) -> BTreeSet<String> {
        members.iter().map(|m| (*m).to_owned()).collect()
    }

    #[test]
    fn a_first_member_takes_everything_and_a_second_takes_half() {
        let one = assign(8, &Assignment::new(), &set(&["a"]));
        assert_eq!(one["a"], (0..8).collect::<Vec<_>>());
        let two = assign(8, &one, &set(&["a", "b"]));
        assert_eq!(two["a"], vec![0, 1, 2, 3]);
        assert_eq!(two["b"], vec![4, 5, 6, 7]);
        assert_eq!(moved(&one, &two), 4);
        let back = assign(8, &two, &set(&["b"]));
        assert_eq!(back["b"], (0..8).collect::<Vec<_>>());
        assert_eq!(moved(&two, &back), 4);
        assert!(assign(8, &two, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn more_members_than_partitions_leaves_some_with_none() {
        let out = assign(2, &Assignment::new(), &set(&["a", "b", "c"]));
        assert_eq!(out.values().map(Vec::len).sum::<usize>(), 2);
        assert_eq!(out.values().filter(|v| v.is_empty()).count(), 1);
    }

    /// The fewest partitions any balanced assignment must move: P minus the most that can stay,
    /// found by trying every choice of which members get the larger quota.
    fn fewest_moves_by_search(partitions: u32, previous: &Assignment, members: &BTreeSet<String>) -> usize {
        let mut claimed = BTreeSet::new();
        let kept: Vec<usize> = members
            .iter()
            .map(|m| {
                let mut mine = previous.get(m).cloned().unwrap_or_default();
                mine.sort_unstable();
                mine.retain(|&p| p < partitions && claimed.insert(p));
                mine.len()
            })
            .collect();
        let m = kept.len();
        let (base, extra) = ((partitions as usize) / m, (partitions as usize) % m);
        let mut best = 0;
        for mask in 0u32..(1 << m) {
            if mask.count_ones() as usize != extra {
                continue;
            }
            let stay: usize =
                kept.iter().enumerate().map(|(i, k)| (*k).min(base + usize::from(mask & (1 << i) != 0))).sum();
            best = best.max(stay);
        }
        // Every previously owned partition that cannot stay moves.
        let owned_before: usize = previous.values().map(Vec::len).sum();
        owned_before - best.min(owned_before)
    }

    fn members_strategy() -> impl Strategy<Value = BTreeSet<String>> {
        proptest::collection::btree_set("[a-f]", 1..=6)
    }

    proptest! {
        /// Invariant 11, and balance: every partition has exactly one owner, every member
        /// ⌊P/M⌋ or ⌈P/M⌉, and no balanced assignment moves fewer.
        #[test]
        fn assignment_is_balanced_and_moves_the_fewest(
            partitions in 1u32..=40,
            first in members_strategy(),
            second in members_strategy(),
        ) {
            let before = assign(partitions, &Assignment::new(), &first);
            let after = assign(partitions, &before, &second);
            let mut all: Vec<u32> = after.values().flatten().copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..partitions).collect::<Vec<_>>());
            let m = second.len() as u32;
            for held in after.values() {
                let n = held.len() as u32;
                prop_assert!(n == partitions / m || n == partitions.div_ceil(m), "unbalanced: {after:?}");
            }
            prop_assert_eq!(after.keys().cloned().collect::<BTreeSet<_>>(), second.clone());
            // Moves counted over partitions whose owner stays a member (departed members'
            // partitions must move, so they are in both counts).
            prop_assert_eq!(moved(&before, &after), fewest_moves_by_search(partitions, &before, &second));
            prop_assert_eq!(super::fewest_moves(partitions, &before, &second), fewest_moves_by_search(partitions, &before, &second));
            // Nothing changes when nobody joins or leaves.
            prop_assert_eq!(assign(partitions, &after, &second), after);
        }
    }
}
