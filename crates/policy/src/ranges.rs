//! Interval arithmetic for the compiler: address ranges (cidr minus
//! except), port sets per protocol, and the sweep that turns overlapping
//! (address range, ports) grants of many rules and policies into disjoint
//! pieces. The kernel's interval set over concatenations (pipapo) refuses
//! overlapping elements, and disjoint pieces are also what keeps the set
//! small: consecutive pod addresses with the same grant become one range.

use std::collections::{BTreeMap, HashMap};

/// An inclusive IPv4 range (as integers).
pub type Range = (u32, u32);

/// `ranges` minus `cut` (both inclusive ranges), sorted and disjoint.
pub fn subtract(mut ranges: Vec<Range>, cut: &[Range]) -> Vec<Range> {
    for &(clo, chi) in cut {
        let mut next = Vec::with_capacity(ranges.len() + 1);
        for (lo, hi) in ranges {
            if chi < lo || clo > hi {
                next.push((lo, hi));
                continue;
            }
            if clo > lo {
                next.push((lo, clo - 1));
            }
            if chi < hi {
                next.push((chi + 1, hi));
            }
        }
        ranges = next;
    }
    ranges.sort_unstable();
    ranges
}

/// What a grant allows on the transport side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ports {
    /// Every protocol, every port (a rule without `ports`).
    Any,
    /// Per protocol number: sorted, disjoint, non-adjacent port ranges.
    Some(BTreeMap<u8, Vec<(u16, u16)>>),
}

impl Ports {
    /// Ports from (protocol, low, high) entries; None when there are none
    /// (a rule whose named ports all failed to resolve allows nothing).
    pub fn from_entries(entries: impl IntoIterator<Item = (u8, u16, u16)>) -> Option<Ports> {
        let mut map: BTreeMap<u8, Vec<(u16, u16)>> = BTreeMap::new();
        for (proto, lo, hi) in entries {
            map.entry(proto).or_default().push((lo, hi));
        }
        if map.is_empty() {
            return None;
        }
        for list in map.values_mut() {
            *list = merge16(std::mem::take(list));
        }
        Some(Ports::Some(map))
    }

    /// The union of two grants.
    pub fn union(&self, other: &Ports) -> Ports {
        match (self, other) {
            (Ports::Any, _) | (_, Ports::Any) => Ports::Any,
            (Ports::Some(a), Ports::Some(b)) => {
                let mut map = a.clone();
                for (proto, list) in b {
                    let slot = map.entry(*proto).or_default();
                    slot.extend_from_slice(list);
                    *slot = merge16(std::mem::take(slot));
                }
                Ports::Some(map)
            }
        }
    }

    /// (protocol range, port range) boxes, for set elements.
    pub fn boxes(&self) -> Vec<((u8, u8), (u16, u16))> {
        match self {
            Ports::Any => vec![((0, 255), (0, 65535))],
            Ports::Some(map) => map
                .iter()
                .flat_map(|(p, list)| list.iter().map(move |r| ((*p, *p), *r)))
                .collect(),
        }
    }
}

/// Sorted, merged (overlapping or adjacent joined) port ranges.
fn merge16(mut list: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    list.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(list.len());
    for (lo, hi) in list {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Disjoint pieces covering the union of `grants`: every address of a
/// piece has exactly the union of the ports of the grants covering it.
/// Adjacent pieces with equal ports are merged; the result is sorted.
pub fn disjoint(grants: &[(Range, Ports)]) -> Vec<(Range, Ports)> {
    if grants.is_empty() {
        return Vec::new();
    }
    // Distinct port sets get small ids so the active set is cheap to key.
    let mut ids: HashMap<&Ports, usize> = HashMap::new();
    let mut by_id: Vec<&Ports> = Vec::new();
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(grants.len() * 2);
    for ((lo, hi), ports) in grants {
        let next = ids.len();
        let id = *ids.entry(ports).or_insert(next);
        if id == by_id.len() {
            by_id.push(ports);
        }
        events.push((u64::from(*lo), true, id));
        events.push((u64::from(*hi) + 1, false, id));
    }
    events.sort_unstable();
    let mut active: BTreeMap<usize, usize> = BTreeMap::new();
    let mut cache: HashMap<Vec<usize>, Ports> = HashMap::new();
    let mut out: Vec<(Range, Ports)> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, id) = events[i];
            if start {
                *active.entry(id).or_insert(0) += 1;
            } else if let Some(n) = active.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&id);
                }
            }
            i += 1;
        }
        let Some(&(end, _, _)) = events.get(i) else {
            break;
        };
        if active.is_empty() || end <= pos {
            continue;
        }
        let key: Vec<usize> = active.keys().copied().collect();
        let ports = cache
            .entry(key)
            .or_insert_with_key(|key| {
                key.iter()
                    .skip(1)
                    .fold(by_id[key[0]].clone(), |acc, id| acc.union(by_id[*id]))
            })
            .clone();
        let (lo, hi) = (pos as u32, (end - 1) as u32);
        match out.last_mut() {
            Some(((_, last_hi), last_ports))
                if u64::from(*last_hi) + 1 == pos && *last_ports == ports =>
            {
                *last_hi = hi
            }
            _ => out.push(((lo, hi), ports)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(lo: u16, hi: u16) -> Ports {
        Ports::from_entries([(6, lo, hi)]).expect("ports")
    }

    #[test]
    fn subtract_cuts_holes() {
        assert_eq!(
            subtract(vec![(0, 100)], &[(10, 19)]),
            vec![(0, 9), (20, 100)]
        );
        assert_eq!(subtract(vec![(0, 100)], &[(0, 100)]), vec![]);
        assert_eq!(
            subtract(vec![(0, u32::MAX)], &[(0, 0)]),
            vec![(1, u32::MAX)]
        );
        assert_eq!(
            subtract(vec![(0, 100)], &[(90, 200), (0, 5)]),
            vec![(6, 89)]
        );
    }

    #[test]
    fn ports_merge_and_union() {
        let p = Ports::from_entries([(6, 80, 80), (6, 81, 81), (17, 53, 53), (6, 90, 95)]);
        let Some(Ports::Some(map)) = p else {
            panic!("ports")
        };
        assert_eq!(map[&6], vec![(80, 81), (90, 95)]);
        assert_eq!(tcp(1, 2).union(&Ports::Any), Ports::Any);
        assert_eq!(tcp(1, 5).union(&tcp(3, 9)), tcp(1, 9));
        assert_eq!(Ports::from_entries([]), None);
    }

    #[test]
    fn overlapping_grants_become_disjoint_pieces() {
        let out = disjoint(&[((10, 20), tcp(80, 80)), ((15, 30), tcp(81, 81))]);
        assert_eq!(
            out,
            vec![
                ((10, 14), tcp(80, 80)),
                ((15, 20), tcp(80, 81)),
                ((21, 30), tcp(81, 81)),
            ]
        );
    }

    #[test]
    fn adjacent_equal_pieces_merge_and_gaps_stay() {
        let out = disjoint(&[
            ((1, 1), tcp(80, 80)),
            ((2, 2), tcp(80, 80)),
            ((4, 4), tcp(80, 80)),
            ((0, u32::MAX), Ports::Any),
        ]);
        assert_eq!(out, vec![((0, u32::MAX), Ports::Any)]);
        let out = disjoint(&[
            ((1, 1), tcp(80, 80)),
            ((2, 2), tcp(80, 80)),
            ((4, 4), tcp(80, 80)),
        ]);
        assert_eq!(out, vec![((1, 2), tcp(80, 80)), ((4, 4), tcp(80, 80))]);
    }

    #[test]
    fn the_whole_address_space_is_handled() {
        let out = disjoint(&[((u32::MAX - 1, u32::MAX), tcp(1, 1)), ((0, 0), tcp(2, 2))]);
        assert_eq!(
            out,
            vec![((0, 0), tcp(2, 2)), ((u32::MAX - 1, u32::MAX), tcp(1, 1))]
        );
    }
}
