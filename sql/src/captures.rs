//! Capture groups of a compiled pattern, found from the literal a match
//! must start with.
//!
//! The `regex` crate finds a match's groups in three passes over the
//! value: a forward DFA for where the match ends, a reverse one for where
//! it starts, then a one-pass DFA over that span for the groups. On short
//! values (URLs, log fields) the passes' setup costs more than their
//! bytes: Nexmark q21's `(&|^)channel_id=([^&]*)` took 280 ns for a
//! 90-byte URL that matches.
//!
//! When every match must start with one of a few literals (the pattern's
//! prefixes, as `regex-automata` extracts them) and the pattern is
//! one-pass (at each byte, at most one way on: a one-pass DFA can then
//! record groups as it goes), the leftmost match is the first literal
//! occurrence from which an anchored one-pass search succeeds: one
//! prefilter scan, then one short pass per candidate. The same pattern in
//! the micro-benchmark of that URL mix: 85 ns a value against 150-180 ns.
//!
//! Patterns of a narrower shape, a literal key and the run of characters
//! after it (`(&|^)channel_id=([^&]*)`), skip both automata
//! ([`crate::literal_capture`]).
//!
//! A value with many candidates that fail (a literal that is common, a
//! pattern that rarely matches after it) would cost a pass each: after
//! [`ATTEMPTS_PER_VALUE`] the value goes to the `regex` crate, so a value
//! costs at most that many passes more than before. A one-pass search
//! that gives up (a Unicode word boundary on non-ASCII bytes) does the
//! same.

use std::sync::Arc;

use regex::{CaptureLocations, Regex};
use regex_automata::dfa::onepass;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, Span};

use crate::literal_capture::{Found, LiteralCapture};

/// Failed anchored searches of one value before it goes to the `regex`
/// crate (see the module docs).
const ATTEMPTS_PER_VALUE: usize = 4;

/// A compiled pattern, and the faster search for its groups (literal key
/// or prefix) where the pattern allows one.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    regex: Regex,
    literal: Option<Arc<LiteralCapture>>,
    prefixed: Option<Arc<PrefixOnePass>>,
}

/// The literals every match starts with, and the one-pass DFA that reads
/// a match's groups from where it starts.
#[derive(Debug)]
struct PrefixOnePass {
    prefilter: Prefilter,
    dfa: onepass::DFA,
}

impl Pattern {
    /// `regex`, with the literal-key search when its pattern has that
    /// shape ([`crate::literal_capture`]), else the prefix search when it
    /// has literal prefixes, never matches empty, and is one-pass.
    pub(crate) fn new(regex: Regex) -> Self {
        // The defaults of `regex::Regex::new`: the same syntax, so the
        // same language and the same groups.
        let hir = syntax::parse(regex.as_str()).ok();
        let literal = hir.as_ref().and_then(LiteralCapture::new).map(Arc::new);
        let prefixed = match (&literal, hir) {
            (None, Some(hir)) => prefix_one_pass(regex.as_str(), &hir).map(Arc::new),
            _ => None,
        };
        Self {
            regex,
            literal,
            prefixed,
        }
    }

    pub(crate) fn regex(&self) -> &Regex {
        &self.regex
    }

    /// Search state for one batch's values.
    pub(crate) fn groups(&self) -> Groups<'_> {
        let prefixed = self.prefixed.as_deref().map(|p| {
            let slots = p.dfa.get_nfa().group_info().slot_len();
            (p, p.dfa.create_cache(), vec![None; slots])
        });
        Groups {
            regex: &self.regex,
            locations: self.regex.capture_locations(),
            literal: self.literal.as_deref(),
            found_by_literal: None,
            prefixed,
            found_by_prefix: false,
        }
    }
}

fn prefix_one_pass(pattern: &str, hir: &regex_syntax::hir::Hir) -> Option<PrefixOnePass> {
    // A pattern that can match empty matches before any literal.
    if hir.properties().minimum_len().unwrap_or(0) == 0 {
        return None;
    }
    let prefilter = Prefilter::from_hir_prefix(MatchKind::LeftmostFirst, hir)?;
    let dfa = onepass::DFA::new(pattern).ok()?;
    Some(PrefixOnePass { prefilter, dfa })
}

/// One batch's search state: where the last value's groups are.
pub(crate) struct Groups<'p> {
    regex: &'p Regex,
    locations: CaptureLocations,
    literal: Option<&'p LiteralCapture>,
    /// The last value's match, when the literal search found it.
    found_by_literal: Option<Found>,
    prefixed: Option<(&'p PrefixOnePass, onepass::Cache, Vec<Option<NonMaxUsize>>)>,
    /// Whether the last match's groups are in the prefix search's slots
    /// (else in `locations`).
    found_by_prefix: bool,
}

impl Groups<'_> {
    /// Searches `value`; true when it matches.
    pub(crate) fn search(&mut self, value: &str) -> bool {
        if let Some(literal) = self.literal {
            self.found_by_literal = literal.search(value.as_bytes());
            return self.found_by_literal.is_some();
        }
        if let Some((prefixed, cache, slots)) = &mut self.prefixed {
            let haystack = value.as_bytes();
            let mut at = 0;
            let mut attempts = 0;
            let settled = loop {
                if attempts == ATTEMPTS_PER_VALUE {
                    break None;
                }
                let Some(candidate) = prefixed.prefilter.find(
                    haystack,
                    Span {
                        start: at,
                        end: haystack.len(),
                    },
                ) else {
                    break Some(false);
                };
                // The whole value stays the haystack, so `^` and
                // look-behind see what precedes the candidate.
                let input = Input::new(haystack)
                    .range(candidate.start..)
                    .anchored(Anchored::Yes);
                match prefixed.dfa.try_search_slots(cache, &input, slots) {
                    Ok(Some(_)) => break Some(true),
                    Ok(None) => {}
                    Err(_) => break None,
                }
                attempts += 1;
                at = candidate.start + 1;
            };
            if let Some(matched) = settled {
                self.found_by_prefix = true;
                return matched;
            }
        }
        self.found_by_prefix = false;
        self.regex
            .captures_read(&mut self.locations, value)
            .is_some()
    }

    /// Groups of the pattern, the whole match (group 0) included.
    pub(crate) fn len(&self) -> usize {
        self.locations.len()
    }

    /// Byte range of group `group` in the last value that matched, if
    /// the group took part.
    pub(crate) fn get(&self, group: usize) -> Option<(usize, usize)> {
        if let (Some(literal), Some(found)) = (self.literal, &self.found_by_literal) {
            return literal.group(found, group);
        }
        match &self.prefixed {
            Some((_, _, slots)) if self.found_by_prefix => {
                let start = (*slots.get(group * 2)?)?.get();
                let end = (*slots.get(group * 2 + 1)?)?.get();
                Some((start, end))
            }
            _ => self.locations.get(group),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Patterns with and without literal prefixes, one-pass or not, with
    /// look-around, case folding and Unicode.
    const PATTERNS: &[&str] = &[
        "(&|^)channel_id=([^&]*)",
        "(^|&)channel_id=([^&]+)",
        "(?:&|^)a=([^&]*)",
        "[?&]channel_id=([0-9]+)",
        "(&|^)&channel_id=([^&]*)",
        "(&|^)a([^&]*)",
        "^a(.*)",
        "b=(7*)",
        "(?i)a=([^&]*)",
        "channel_id=([0-9]+)",
        "(?i)ab(c|d)",
        r"\bab(c)?",
        "(a)|(b)",
        "a(b*)c",
        "(ab|abc)d",
        "x(日本)?",
        "^ab",
        "(b)$",
        "a+b",
    ];

    /// What the `regex` crate gives: whether it matched, and every
    /// group's range.
    fn expected(regex: &Regex, value: &str) -> Option<Vec<Option<(usize, usize)>>> {
        let mut locations = regex.capture_locations();
        regex.captures_read(&mut locations, value)?;
        Some((0..locations.len()).map(|g| locations.get(g)).collect())
    }

    fn found(groups: &mut Groups<'_>, value: &str) -> Option<Vec<Option<(usize, usize)>>> {
        groups
            .search(value)
            .then(|| (0..groups.len()).map(|g| groups.get(g)).collect())
    }

    #[test]
    fn patterns_with_literal_prefixes_take_the_prefix_search() {
        for pattern in ["(&|^)channel_id=([0-9]*)&", "(?i)ab(c|d)", "a(b*)c"] {
            let pattern = Pattern::new(Regex::new(pattern).unwrap());
            assert!(pattern.prefixed.is_some(), "{:?}", pattern.regex);
        }
        // A literal key and the run after it: the substring search.
        let pattern = Pattern::new(Regex::new("(&|^)channel_id=([^&]*)").unwrap());
        assert!(pattern.literal.is_some() && pattern.prefixed.is_none());
        // Matches empty; no literal prefix.
        for pattern in ["(a)?", ".*x", "[a-z]+q"] {
            let pattern = Pattern::new(Regex::new(pattern).unwrap());
            assert!(pattern.prefixed.is_none(), "{:?}", pattern.regex);
        }
    }

    proptest! {
        /// The same groups as the `regex` crate, value after value with
        /// one search state (as a batch runs).
        #[test]
        fn the_same_groups_as_the_regex_crate(
            values in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![
                        Just("a"), Just("b"), Just("c"), Just("d"), Just("A"), Just("&"),
                        Just("x"), Just("日本"), Just(" "), Just("channel_id="), Just("7"),
                        Just("?"), Just("="), Just("a="), Just("\n"),
                    ],
                    0..12,
                ).prop_map(|parts| parts.concat()),
                1..16,
            ),
        ) {
            for pattern in PATTERNS {
                let regex = Regex::new(pattern).unwrap();
                let compiled = Pattern::new(regex.clone());
                let mut groups = compiled.groups();
                for value in &values {
                    prop_assert_eq!(
                        found(&mut groups, value),
                        expected(&regex, value),
                        "{} on {:?}", pattern, value
                    );
                }
            }
        }
    }

    #[test]
    fn many_failed_candidates_go_to_the_regex_crate() {
        let regex = Regex::new("a(b+)c").unwrap();
        let compiled = Pattern::new(regex.clone());
        assert!(compiled.prefixed.is_some());
        let mut groups = compiled.groups();
        let value = format!("{}abbc", "ab".repeat(50));
        assert_eq!(found(&mut groups, &value), expected(&regex, &value));
        assert!(!groups.found_by_prefix, "settled by the regex crate");
        assert_eq!(found(&mut groups, "zabc"), expected(&regex, "zabc"));
        assert!(groups.found_by_prefix);
    }
}
