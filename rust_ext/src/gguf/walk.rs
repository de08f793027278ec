//! Walking past an array of strings inside one window of bytes.
//!
//! A string array (a vocabulary: 50k-250k tokens, as many merges) can only be
//! skipped by reading every length prefix: each one says where the next
//! string starts. That chain of dependent loads is the scanner's hot loop,
//! bound by load latency. To keep several loads in flight, [`walk`] guesses
//! string boundaries inside the window and walks from the start and from
//! each guess at once (one chain per segment). A chain's work counts only if
//! the chain before it lands exactly on its guess, which proves the guess is
//! a real boundary of the same array; otherwise the walk goes on serially
//! from the last proven position. The result is always the one a plain
//! serial walk gives (see the test at the end).

use super::reader::MAX_STRING_LEN;

/// Why a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// All the strings asked for were walked.
    Done,
    /// The next length prefix is not (entirely) in the window.
    WindowEnd,
    /// The next string's bytes run past the window; its length is `len`.
    Spill { len: u64 },
    /// The next string's length is above the cap.
    TooLong { len: u64 },
}

/// Where a walk stopped: `off` is the offset (in the window) of the next
/// string's length prefix, `walked` how many strings were walked before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    pub off: usize,
    pub walked: u64,
    pub stop: Stop,
}

/// Byte order and width of length prefixes.
#[derive(Debug, Clone, Copy)]
pub struct Prefix {
    pub wide: bool,
    pub big_endian: bool,
}

/// Reading one length prefix; one type per width and byte order, so that
/// the hot loops are compiled without a branch on either.
trait LenPrefix {
    const SIZE: usize;
    fn read(w: &[u8], off: usize) -> Option<u64>;
}

macro_rules! len_prefix {
    ($name:ident, $int:ty, $from:ident) => {
        struct $name;
        impl LenPrefix for $name {
            const SIZE: usize = std::mem::size_of::<$int>();
            #[inline(always)]
            fn read(w: &[u8], off: usize) -> Option<u64> {
                let bytes = w.get(off..off.checked_add(Self::SIZE)?)?;
                Some(<$int>::$from(bytes.try_into().ok()?) as u64)
            }
        }
    };
}
len_prefix!(Le64, u64, from_le_bytes);
len_prefix!(Be64, u64, from_be_bytes);
len_prefix!(Le32, u32, from_le_bytes);
len_prefix!(Be32, u32, from_be_bytes);

/// Below these sizes a plain walk is as fast.
const MIN_SPLIT_BYTES: usize = 16 * 1024;
const MIN_SPLIT_COUNT: u64 = 512;
/// Bytes walked per split (so that the guesses land inside the array).
const SPLIT_SPAN: usize = 256 * 1024;
/// Chains walked at once.
const CHAINS: usize = 4;
/// Strings walked first to estimate the size of the rest.
const PROBE: u64 = 32;
/// How far to look for a boundary, and how many plausible short strings in
/// a row make a guess.
const GUESS_SEARCH: usize = 4096;
const GUESS_STEPS: usize = 8;
const GUESS_MAX_LEN: u64 = 1024;

/// Walks up to `count` strings from the start of `w` (perhaps stopping
/// before `w`'s end with [`Stop::WindowEnd`]: the caller walks on from `off`).
pub fn walk(w: &[u8], count: u64, p: Prefix) -> Walk {
    match (p.wide, p.big_endian) {
        (true, false) => walk_with::<Le64>(w, count),
        (true, true) => walk_with::<Be64>(w, count),
        (false, false) => walk_with::<Le32>(w, count),
        (false, true) => walk_with::<Be32>(w, count),
    }
}

fn walk_with<L: LenPrefix>(w: &[u8], count: u64) -> Walk {
    if count < MIN_SPLIT_COUNT || w.len() < MIN_SPLIT_BYTES {
        return walk_serial::<L>(w, 0, count);
    }
    // A span (<= MAX_STRING_LEN bytes, so no string in it is too long).
    let w = w.get(..SPLIT_SPAN).unwrap_or(w);
    let head = walk_serial::<L>(w, 0, PROBE);
    if head.stop != Stop::Done {
        return head;
    }
    // Guesses spread over what is left of the array in this span, by the
    // average size of the strings so far.
    let rest = count - PROBE;
    let avg = (head.off as u64 / PROBE).max(1);
    let region = (w.len().saturating_sub(head.off) as u64).min(rest.saturating_mul(avg)) as usize;
    let mut starts = [head.off; CHAINS];
    for i in 1..CHAINS {
        let from = head.off + region / CHAINS * i;
        match guess_boundary::<L>(w, from.max(starts[i - 1] + L::SIZE)) {
            Some(g) => starts[i] = g,
            None => return add(PROBE, walk_serial::<L>(w, head.off, rest)),
        }
    }
    add(PROBE, walk_chains::<L>(w, starts, rest))
}

fn add(walked: u64, w: Walk) -> Walk {
    Walk {
        walked: walked + w.walked,
        ..w
    }
}

/// One chain from `off`.
fn walk_serial<L: LenPrefix>(w: &[u8], mut off: usize, count: u64) -> Walk {
    let mut walked = 0;
    while walked < count {
        let Some(len) = L::read(w, off) else {
            return Walk {
                off,
                walked,
                stop: Stop::WindowEnd,
            };
        };
        if len > MAX_STRING_LEN {
            return Walk {
                off,
                walked,
                stop: Stop::TooLong { len },
            };
        }
        let body = off + L::SIZE; // the prefix was in w: no overflow
        if len > w.len().saturating_sub(body) as u64 {
            return Walk {
                off,
                walked,
                stop: Stop::Spill { len },
            };
        }
        off = body + len as usize;
        walked += 1;
    }
    Walk {
        off,
        walked,
        stop: Stop::Done,
    }
}

/// A position at or after `from` that looks like the start of a run of
/// short strings (every string in a vocabulary is short), if any.
fn guess_boundary<L: LenPrefix>(w: &[u8], from: usize) -> Option<usize> {
    let end = from.saturating_add(GUESS_SEARCH).min(w.len());
    (from..end).find(|&start| {
        let mut off = start;
        for _ in 0..GUESS_STEPS {
            match L::read(w, off) {
                Some(len) if len <= GUESS_MAX_LEN => off += L::SIZE + len as usize,
                _ => return false,
            }
        }
        off.saturating_add(L::SIZE) <= w.len()
    })
}

/// One step of a chain at `pos` that must not go past `end` (<= `w.len()`).
#[inline(always)]
fn step<L: LenPrefix>(w: &[u8], pos: usize, end: usize) -> Option<usize> {
    let body = pos.checked_add(L::SIZE)?;
    if body > end {
        return None;
    }
    let len = L::read(w, pos)?;
    (len <= (end - body) as u64).then_some(body + len as usize)
}

/// CHAINS chains, chain i from `starts[i]` to `starts[i + 1]` (the last one
/// to the end of `w`), stepped together; then checked one after the other.
#[inline(never)] // its own registers: the loop below needs all of them
fn walk_chains<L: LenPrefix>(w: &[u8], starts: [usize; CHAINS], count: u64) -> Walk {
    let mut ends = [w.len(); CHAINS];
    ends[..CHAINS - 1].copy_from_slice(&starts[1..]);
    // All chains at once, while every chain can step and the strings walked
    // stay within count (none of the chains knows where the array ends).
    // Four plain variables, so that the positions stay in registers; a chain
    // that cannot step ends the round (the chains before it stepped once more).
    let [mut p0, mut p1, mut p2, mut p3] = starts;
    let [e0, e1, e2, e3] = ends;
    let (mut rounds, max_rounds) = (0u64, count / CHAINS as u64);
    let mut stepped_last_round = 0;
    while rounds < max_rounds {
        match step::<L>(w, p0, e0) {
            Some(q) => p0 = q,
            None => break,
        }
        stepped_last_round = 1;
        match step::<L>(w, p1, e1) {
            Some(q) => p1 = q,
            None => break,
        }
        stepped_last_round = 2;
        match step::<L>(w, p2, e2) {
            Some(q) => p2 = q,
            None => break,
        }
        stepped_last_round = 3;
        match step::<L>(w, p3, e3) {
            Some(q) => p3 = q,
            None => break,
        }
        stepped_last_round = 0;
        rounds += 1;
    }
    let mut pos = [p0, p1, p2, p3];
    let mut n = [rounds; CHAINS];
    for c in n.iter_mut().take(stepped_last_round) {
        *c += 1;
    }
    // Then each chain but the last up to its end, alone.
    for i in 0..CHAINS - 1 {
        while pos[i] < ends[i] {
            match step::<L>(w, pos[i], ends[i]) {
                Some(p) => {
                    pos[i] = p;
                    n[i] += 1;
                }
                None => break,
            }
        }
    }
    // Chain i counts if chain i - 1 landed on its start; the walk goes on
    // serially from the last position known to be real.
    let mut done = 0u64;
    let mut at = starts[0];
    for i in 0..CHAINS {
        if done + n[i] > count {
            return add(done, walk_serial::<L>(w, at, count - done));
        }
        done += n[i];
        if i == CHAINS - 1 || pos[i] != ends[i] {
            return add(done, walk_serial::<L>(w, pos[i], count - done));
        }
        at = ends[i];
    }
    add(done, walk_serial::<L>(w, at, count - done))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn strings(rng: &mut Rng, n: usize, p: Prefix, max_len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            let len = rng.below(max_len + 1);
            if p.wide {
                out.extend(if p.big_endian {
                    len.to_be_bytes()
                } else {
                    len.to_le_bytes()
                });
            } else {
                let l = len as u32;
                out.extend(if p.big_endian {
                    l.to_be_bytes()
                } else {
                    l.to_le_bytes()
                });
            }
            out.extend((0..len).map(|_| b'a' + rng.below(26) as u8));
        }
        out
    }

    impl Prefix {
        fn size(self) -> usize {
            if self.wide {
                8
            } else {
                4
            }
        }
    }

    fn serial(w: &[u8], count: u64, p: Prefix) -> Walk {
        match (p.wide, p.big_endian) {
            (true, false) => walk_serial::<Le64>(w, 0, count),
            (true, true) => walk_serial::<Be64>(w, 0, count),
            (false, false) => walk_serial::<Le32>(w, 0, count),
            (false, true) => walk_serial::<Be32>(w, 0, count),
        }
    }

    /// Walks `count` strings of `data` the way the reader does, window
    /// after window: (end offset, strings walked, why it stopped).
    fn drive(
        data: &[u8],
        count: u64,
        p: Prefix,
        f: fn(&[u8], u64, Prefix) -> Walk,
    ) -> (usize, u64, Stop) {
        let (mut off, mut walked) = (0usize, 0u64);
        loop {
            let r = f(&data[off..], count - walked, p);
            off += r.off;
            walked += r.walked;
            match r.stop {
                Stop::Done => return (off, walked, Stop::Done),
                Stop::WindowEnd if r.walked > 0 => {}
                Stop::Spill { len } if off + p.size() + len as usize <= data.len() => {
                    off += p.size() + len as usize;
                    walked += 1;
                    if walked == count {
                        return (off, walked, Stop::Done);
                    }
                }
                stop => return (off, walked, stop),
            }
        }
    }

    #[test]
    fn split_walk_equals_serial_walk_on_vocabularies_and_noise() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..400 {
            let p = Prefix {
                wide: case % 3 != 0,
                big_endian: case % 5 == 0,
            };
            let n = 500 + rng.below(5000) as usize;
            let mut data = strings(&mut rng, n, p, if case % 7 == 0 { 3000 } else { 20 });
            // Some cases: trailing noise, a truncated window, a corrupt length.
            if case % 2 == 0 {
                data.extend((0..rng.below(20_000)).map(|_| rng.below(3) as u8));
            }
            if case % 3 == 0 {
                let cut = rng.below(data.len() as u64) as usize;
                data.truncate(cut);
            }
            if case % 11 == 0 && !data.is_empty() {
                let at = rng.below(data.len() as u64) as usize;
                data[at] = 0xff;
            }
            for count in [n as u64, n as u64 / 2, n as u64 + 10] {
                assert_eq!(
                    drive(&data, count, p, walk),
                    drive(&data, count, p, serial),
                    "case {case} count {count}"
                );
            }
        }
    }

    #[test]
    fn chains_started_at_wrong_guesses_walk_like_one_chain() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let p = Prefix {
            wide: true,
            big_endian: false,
        };
        let mut checked = 0;
        for case in 0..500 {
            let n = 50 + rng.below(400) as usize;
            let mut data = strings(&mut rng, n, p, 12);
            data.extend((0..rng.below(200)).map(|_| rng.below(4) as u8));
            // Where every string starts, by the serial walk.
            let mut starts_of = vec![0];
            while let Some(&last) = starts_of.last() {
                match walk_serial::<Le64>(&data, last, 1) {
                    Walk {
                        stop: Stop::Done,
                        off,
                        ..
                    } if starts_of.len() <= n => starts_of.push(off),
                    _ => break,
                }
            }
            let mut guesses = [0usize; CHAINS];
            for guess in guesses.iter_mut().skip(1) {
                let at = starts_of[rng.below(starts_of.len() as u64) as usize];
                *guess = match rng.below(3) {
                    0 => at,                                        // a real boundary
                    1 => at + 1 + rng.below(7) as usize,            // just off one
                    _ => rng.below(data.len() as u64 + 1) as usize, // anywhere
                };
            }
            guesses.sort_unstable();
            if guesses.windows(2).any(|g| g[1] < g[0] + 8) || guesses[CHAINS - 1] + 8 > data.len() {
                continue;
            }
            for count in [
                n as u64,
                n as u64 / 3,
                n as u64 + 5,
                rng.below(n as u64 + 1),
            ] {
                assert_eq!(
                    walk_chains::<Le64>(&data, guesses, count),
                    walk_serial::<Le64>(&data, 0, count),
                    "case {case} guesses {guesses:?} count {count}"
                );
            }
            checked += 1;
        }
        assert!(checked > 250, "only {checked} cases had usable guesses");
    }
}
