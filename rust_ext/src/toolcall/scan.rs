//! Finding bytes fast (eight at a time) and matching the fixed markers one
//! byte at a time, so that a marker split across chunks is still found and
//! nothing already consumed is looked at again.

pub(crate) const TOOL_CALL: &[u8] = b"<tool_call>";
pub(crate) const TOOL_CALL_END: &[u8] = b"</tool_call>";
pub(crate) const FUNCTION: &[u8] = b"<function=";
pub(crate) const FUNCTION_END: &[u8] = b"</function>";
pub(crate) const PARAMETER: &[u8] = b"<parameter=";
pub(crate) const PARAMETER_END: &[u8] = b"</parameter>";
pub(crate) const THINK: &[u8] = b"<think>";
pub(crate) const THINK_END: &[u8] = b"</think>";

/// Longer than the longest marker: a matcher never holds more.
const MAX_MARKER: usize = 16;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

fn word(c: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(c);
    u64::from_le_bytes(a)
}

/// True when some byte of `x` is zero (the classic bit trick: never a false
/// negative; a candidate word is confirmed byte by byte anyway).
fn has_zero(x: u64) -> bool {
    x.wrapping_sub(LO) & !x & HI != 0
}

/// The first position where `is(byte)`; `maybe(word)` must be true for every
/// 8-byte word that holds such a byte (it may be true for others too).
fn find_by(hay: &[u8], maybe: impl Fn(u64) -> bool, is: impl Fn(u8) -> bool) -> Option<usize> {
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        if maybe(word(c)) {
            if let Some(i) = c.iter().position(|&b| is(b)) {
                return Some(base + i);
            }
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| is(b))
        .map(|i| base + i)
}

/// The first `needle` in `hay`.
pub(crate) fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    let rep = LO * u64::from(needle);
    find_by(hay, |w| has_zero(w ^ rep), |b| b == needle)
}

/// The first `a` or `b` in `hay`.
pub(crate) fn find_byte2(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    let (ra, rb) = (LO * u64::from(a), LO * u64::from(b));
    find_by(
        hay,
        |w| has_zero(w ^ ra) || has_zero(w ^ rb),
        |x| x == a || x == b,
    )
}

/// The first byte that cannot stand as it is inside a JSON string: a quote,
/// a backslash or a control character.
pub(crate) fn find_json_special(hay: &[u8]) -> Option<usize> {
    let (rq, rb) = (LO * u64::from(b'"'), LO * u64::from(b'\\'));
    find_by(
        hay,
        // w - 0x20.. & !w & HI: some byte below 0x20 (bytes >= 0x80 are masked by !w)
        |w| has_zero(w ^ rq) || has_zero(w ^ rb) || w.wrapping_sub(LO * 0x20) & !w & HI != 0,
        |x| x == b'"' || x == b'\\' || x < 0x20,
    )
}

/// JSON's whitespace, which is also what may separate markup.
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// How many bytes of whitespace `hay` starts with.
pub(crate) fn ws_run(hay: &[u8]) -> usize {
    hay.iter().take_while(|&&b| is_ws(b)).count()
}

/// Whether `held` is the start of one of `markers`.
pub(crate) fn starts_marker(held: &[u8], markers: &[&'static [u8]]) -> bool {
    markers.iter().any(|m| m.starts_with(held))
}

/// The held bytes when the stream ends right after a call: an opener cut
/// short is text (as it would be anywhere else), a closer cut short is not.
pub(crate) fn opener_cut_short(held: &[u8]) -> &[u8] {
    if starts_marker(held, &[TOOL_CALL, FUNCTION]) {
        held
    } else {
        &[]
    }
}

/// What the byte just pushed did to the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    /// The held bytes, this one included, are a proper prefix of a marker.
    Partial,
    /// This byte completed the marker (nothing is held any more).
    Full(&'static [u8]),
    /// No marker starts with the held bytes and this one: the byte is not
    /// taken, the held bytes stay for the caller to treat as content.
    Fail,
}

/// A marker being matched: the bytes seen so far (always a proper prefix of
/// one of the markers, so at most [`MAX_MARKER`] bytes, all ASCII).
#[derive(Debug, Default, Clone)]
pub(crate) struct Matcher {
    buf: [u8; MAX_MARKER],
    len: usize,
}

impl Matcher {
    pub(crate) fn push(&mut self, b: u8, markers: &[&'static [u8]]) -> Match {
        if self.len + 1 >= MAX_MARKER {
            return Match::Fail;
        }
        self.buf[self.len] = b;
        let seen = &self.buf[..=self.len];
        if let Some(m) = markers.iter().find(|m| **m == seen) {
            self.len = 0;
            return Match::Full(m);
        }
        if starts_marker(seen, markers) {
            self.len += 1;
            Match::Partial
        } else {
            Match::Fail
        }
    }

    pub(crate) fn held(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn active(&self) -> bool {
        self.len > 0
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Starts matching from `held`; all of it stays held (markers have no
    /// `<` after their first byte, so a failed match never hides a shorter one).
    pub(crate) fn set(&mut self, held: &[u8]) {
        let n = held.len().min(MAX_MARKER - 1);
        self.buf[..n].copy_from_slice(&held[..n]);
        self.len = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bytes_in_every_position_of_a_word() {
        for len in 0..40 {
            for at in 0..len {
                let mut hay = vec![b'a'; len];
                hay[at] = b'<';
                assert_eq!(find_byte(&hay, b'<'), Some(at));
                assert_eq!(find_byte2(&hay, b'\n', b'<'), Some(at));
                hay[at] = b'\x01';
                assert_eq!(find_json_special(&hay), Some(at));
            }
            assert_eq!(find_byte(&vec![b'a'; len], b'<'), None);
        }
    }

    #[test]
    fn high_bytes_are_not_control_characters() {
        let hay = "ééééééééé\"".as_bytes();
        assert_eq!(find_json_special(hay), Some(hay.len() - 1));
    }

    #[test]
    fn matcher_reports_partial_full_and_fail() {
        let markers: &[&'static [u8]] = &[TOOL_CALL, THINK];
        let mut m = Matcher::default();
        for &b in b"<tool_call" {
            assert_eq!(m.push(b, markers), Match::Partial);
        }
        assert_eq!(m.push(b'>', markers), Match::Full(TOOL_CALL));
        assert!(!m.active());
        assert_eq!(m.push(b'<', markers), Match::Partial);
        assert_eq!(m.push(b'x', markers), Match::Fail);
        assert_eq!(m.held(), b"<");
    }
}
