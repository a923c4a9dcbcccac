//! Patterns that read a value after a literal key: `(&|^)channel_id=([^&]*)`,
//! `[?&]id=([0-9]+)`, `user=([^;]*)`. Query-string and log-field
//! extraction, answered with a substring search instead of an automaton.
//!
//! The shape, read from the pattern's syntax tree: an optional boundary
//! (one byte of a set, or the start of the value, or either; captured or
//! not), then a literal key, then a greedy run of one class of
//! characters (`*` or `+`, captured or not), and nothing more. A match is
//! the first occurrence of the key whose boundary holds and whose run is
//! long enough: one SIMD substring search, a byte check, and a scan of the
//! value against a 256-entry table. The prefix search of [`crate::captures`]
//! (a literal prefilter over two literals, then a one-pass automaton over
//! the key and value) took 85 ns a URL in its micro-benchmark and 44% of
//! Nexmark q21's engine time; q21's engine alone ran 1.49x faster with
//! this search.
//!
//! Why the first such occurrence is the leftmost-first match: a match
//! starts at its key's occurrence or one byte before it, so starts grow
//! with occurrences, and a run with nothing after it is taken whole (it
//! never gives a character back to let a later part match). Two
//! occurrences can give the same start only when the key begins with a
//! boundary byte (the start of the value for one, the byte for the
//! other); then the alternation's order would decide, so such patterns
//! are left to the general search. So are classes whose bytes do not
//! decide membership in UTF-8: a class must either hold no character past
//! ASCII or hold all of them.

use memchr::memmem::Finder;
use regex_syntax::hir::{Class, Hir, HirKind, Look};

/// A pattern of the shape above.
#[derive(Debug)]
pub(crate) struct LiteralCapture {
    key: Finder<'static>,
    boundary: Option<Boundary>,
    /// `[byte]` -> whether the run goes on over it.
    run: [bool; 256],
    /// Whether the run must take at least one character.
    run_nonempty: bool,
    /// The run's group, when it is captured.
    run_group: Option<usize>,
}

#[derive(Debug)]
struct Boundary {
    /// `[byte]` -> whether the byte before the key may be it.
    bytes: [bool; 256],
    /// Whether the key may start the value instead.
    at_start: bool,
    /// The boundary's group, when it is captured.
    group: Option<usize>,
}

/// Where a match and its groups are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    start: usize,
    end: usize,
    boundary_start: usize,
    key_start: usize,
    run_start: usize,
}

impl LiteralCapture {
    /// The pattern's search, when its syntax tree has the shape above.
    pub(crate) fn new(hir: &Hir) -> Option<Self> {
        let HirKind::Concat(parts) = hir.kind() else {
            return None;
        };
        let (boundary, key, run) = match parts.as_slice() {
            [key, run] => (None, key, run),
            [boundary, key, run] => (Some(boundary), key, run),
            _ => return None,
        };
        let HirKind::Literal(key) = key.kind() else {
            return None;
        };
        let key: &[u8] = &key.0;
        let (run_group, run) = uncaptured(run);
        let HirKind::Repetition(repetition) = run.kind() else {
            return None;
        };
        if repetition.max.is_some() || !repetition.greedy || repetition.min > 1 {
            return None;
        }
        let boundary = match boundary {
            Some(boundary) => Some(Boundary::new(boundary)?),
            None => None,
        };
        let first = *key.first()?;
        if boundary
            .as_ref()
            .is_some_and(|b| b.bytes[usize::from(first)])
        {
            return None;
        }
        Some(Self {
            key: Finder::new(key).into_owned(),
            boundary,
            run: class_bytes(&repetition.sub)?,
            run_nonempty: repetition.min == 1,
            run_group,
        })
    }

    /// The leftmost-first match in `haystack`.
    #[inline]
    pub(crate) fn search(&self, haystack: &[u8]) -> Option<Found> {
        let key_len = self.key.needle().len();
        let mut from = 0;
        while let Some(at) = self.key.find(&haystack[from..]) {
            let key_start = from + at;
            from = key_start + 1;
            let (start, boundary_start) = match &self.boundary {
                None => (key_start, key_start),
                Some(boundary) => {
                    let before = key_start.checked_sub(1).map(|i| haystack[i]);
                    match before {
                        Some(byte) if boundary.bytes[usize::from(byte)] => {
                            (key_start - 1, key_start - 1)
                        }
                        None if boundary.at_start => (0, 0),
                        _ => continue,
                    }
                }
            };
            let run_start = key_start + key_len;
            let run_len = haystack[run_start..]
                .iter()
                .position(|&byte| !self.run[usize::from(byte)])
                .unwrap_or(haystack.len() - run_start);
            if self.run_nonempty && run_len == 0 {
                continue;
            }
            return Some(Found {
                start,
                end: run_start + run_len,
                boundary_start,
                key_start,
                run_start,
            });
        }
        None
    }

    /// Group `group` of a match, if it took part (every group of this
    /// shape does).
    pub(crate) fn group(&self, found: &Found, group: usize) -> Option<(usize, usize)> {
        if group == 0 {
            return Some((found.start, found.end));
        }
        if self.run_group == Some(group) {
            return Some((found.run_start, found.end));
        }
        match &self.boundary {
            Some(boundary) if boundary.group == Some(group) => {
                Some((found.boundary_start, found.key_start))
            }
            _ => None,
        }
    }
}

impl Boundary {
    /// One byte of a set, or the start of the value, or a choice of
    /// them; captured or not.
    fn new(hir: &Hir) -> Option<Self> {
        let (group, hir) = uncaptured(hir);
        let choices = match hir.kind() {
            HirKind::Alternation(choices) => choices.as_slice(),
            _ => std::slice::from_ref(hir),
        };
        let mut boundary = Self {
            bytes: [false; 256],
            at_start: false,
            group,
        };
        for choice in choices {
            match choice.kind() {
                HirKind::Look(Look::Start) => boundary.at_start = true,
                HirKind::Literal(literal) => match *literal.0 {
                    [byte] if byte.is_ascii() => boundary.bytes[usize::from(byte)] = true,
                    _ => return None,
                },
                HirKind::Class(_) => {
                    let bytes = class_bytes(choice)?;
                    // One byte: a class with characters past ASCII would
                    // need more than one.
                    if bytes[0x80..].iter().any(|&b| b) {
                        return None;
                    }
                    for (byte, member) in bytes.iter().enumerate() {
                        boundary.bytes[byte] |= member;
                    }
                }
                _ => return None,
            }
        }
        Some(boundary)
    }
}

/// A capture's group and what it holds, or no group and the tree itself.
fn uncaptured(hir: &Hir) -> (Option<usize>, &Hir) {
    match hir.kind() {
        HirKind::Capture(capture) => (Some(capture.index as usize), &capture.sub),
        _ => (None, hir),
    }
}

/// Which bytes of valid UTF-8 belong to a class: its ASCII members, and
/// every byte past ASCII when the class holds every character past ASCII.
/// None when it holds some characters past ASCII but not all.
fn class_bytes(hir: &Hir) -> Option<[bool; 256]> {
    let HirKind::Class(Class::Unicode(class)) = hir.kind() else {
        return None;
    };
    let mut bytes = [false; 256];
    // Characters past ASCII: every scalar value from U+0080, less the
    // surrogates, which no `char` is.
    let all_past_ascii = 0x10_FFFF - 0x80 + 1 - 0x800;
    let mut past_ascii = 0;
    for range in class.ranges() {
        let (start, end) = (u32::from(range.start()), u32::from(range.end()));
        for c in start..=end.min(0x7F) {
            bytes[c as usize] = true;
        }
        if end >= 0x80 {
            let from = start.max(0x80);
            let (low, high) = (from.max(0xD800), end.min(0xDFFF));
            let surrogates = if low <= high { high - low + 1 } else { 0 };
            past_ascii += end - from + 1 - surrogates;
        }
    }
    match past_ascii {
        0 => Some(bytes),
        n if n == all_past_ascii => {
            bytes[0x80..].fill(true);
            Some(bytes)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::util::syntax;

    fn compiled(pattern: &str) -> Option<LiteralCapture> {
        LiteralCapture::new(&syntax::parse(pattern).expect("a pattern"))
    }

    #[test]
    fn shapes_it_takes_and_leaves() {
        for pattern in [
            "(&|^)channel_id=([^&]*)",
            "(^|&)channel_id=([^&]+)",
            "(?:&|^)a=([^&]*)",
            "[?&]id=([0-9]+)",
            "^id=(.*)",
            "user=([^;]*)",
            "k=[a-z]*",
            // Case folding makes the key's first letter a boundary.
            "(?i)a=([0-9]*)",
        ] {
            assert!(compiled(pattern).is_some(), "{pattern}");
        }
        for pattern in [
            // The key starts with a boundary byte.
            "(&|^)&a=([^&]*)",
            // Runs that are bounded, lazy, or followed by more.
            "a=([0-9]{2})",
            "a=([0-9]*?)",
            "a=([0-9]*)x",
            // A class holding some characters past ASCII.
            "a=([^é]*)",
            "a=([a-zé]*)",
            // Case folding puts the Kelvin sign in the boundary's class.
            "(?i)k=([0-9]*)",
            // Multi-line start.
            "(?m)(&|^)a=([^&]*)",
        ] {
            assert!(compiled(pattern).is_none(), "{pattern}");
        }
    }

    #[test]
    fn class_bytes_of_negated_and_ascii_classes() {
        let negated = class_bytes(&syntax::parse("[^&]").unwrap()).unwrap();
        assert!(!negated[usize::from(b'&')]);
        assert!(negated[usize::from(b'a')] && negated[0xC3] && negated[0x80] && negated[0xFF]);
        let digits = class_bytes(&syntax::parse("[0-9]").unwrap()).unwrap();
        assert_eq!(digits.iter().filter(|&&b| b).count(), 10);
        let dot = class_bytes(&syntax::parse("(?s).").unwrap()).unwrap();
        assert!(dot.iter().all(|&b| b));
    }
}
